"""FedCMI's network: the self and infiltration projections, and the three client forms (both
modalities, one, one with the other zero-filled)."""

import torch

from fedrs.models.cmi import CmiSpec, CrossModalInfiltrationNet

SPEC = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 8, "dim": 8}


def test_three_client_forms_and_zero_fill():
    torch.manual_seed(0)
    model = CrossModalInfiltrationNet(CmiSpec.from_dict(SPEC)).eval()
    hsi, lidar = torch.randn(4, 5, 7, 7), torch.randn(4, 1, 7, 7)
    z = model.project(hsi, lidar)
    assert all(z[k].shape == (4, 8) for k in ("s_hsi", "i_hsi", "s_lidar", "i_lidar"))
    assert torch.allclose(model(hsi=hsi, lidar=lidar), model.fuse(z["s_hsi"], z["s_lidar"]))
    assert torch.allclose(model(hsi=hsi), model.fuse(z["s_hsi"], z["i_hsi"]))
    assert torch.allclose(model(lidar=lidar), model.fuse(z["i_lidar"], z["s_lidar"]))
    assert torch.allclose(model(lidar=lidar, zero_fill=True), model.fuse(torch.zeros(4, 8), z["s_lidar"]))
    assert model(hsi=hsi).shape == (4, 3)
    mlp = CrossModalInfiltrationNet(CmiSpec.from_dict({**SPEC, "projector": "mlp"}))
    assert isinstance(mlp.hsi_self, torch.nn.Sequential)
