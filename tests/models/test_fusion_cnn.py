import pytest
import torch

from fedrs.models.fusion_cnn import FusionCNN, FusionSpec, parameter_modality


@pytest.mark.parametrize("bands,channels,patch", [(7, 1, 7), (63, 2, 5), (144, 1, 9)])
def test_fusion_shapes_for_any_band_count(bands, channels, patch):
    model = FusionCNN(FusionSpec(bands=bands, lidar_channels=channels, num_classes=6, width=8, dim=16)).eval()
    out = model(hsi=torch.randn(4, bands, patch, patch), lidar=torch.randn(4, channels, patch, patch))
    assert out.shape == (4, 6)


def test_absent_modality_is_a_zero_feature():
    torch.manual_seed(0)
    model = FusionCNN(FusionSpec(bands=5, lidar_channels=1, num_classes=3, width=8, dim=16)).eval()
    hsi = torch.randn(3, 5, 7, 7)
    # replacing the LiDAR encoder's output by zeros is what "lidar=None" means
    model.lidar_encoder.forward = lambda x: torch.zeros(x.shape[0], 16)
    assert torch.allclose(model(hsi=hsi), model(hsi=hsi, lidar=torch.randn(3, 1, 7, 7)))
    with pytest.raises(ValueError, match="at least one modality"):
        model()


def test_unimodal_variant_has_one_encoder():
    model = FusionCNN(FusionSpec(bands=5, lidar_channels=1, num_classes=3, modalities=("lidar",), width=8, dim=16))
    assert not hasattr(model, "hsi_encoder") and hasattr(model, "lidar_encoder")
    assert model.eval()(lidar=torch.randn(2, 1, 7, 7)).shape == (2, 3)


def test_parameter_ownership_by_prefix():
    model = FusionCNN(FusionSpec(bands=5, lidar_channels=1, num_classes=3, width=8, dim=16))
    owners = {parameter_modality(n) for n in model.state_dict()}
    assert owners == {"hsi", "lidar", None}
    assert parameter_modality("classifier.1.weight") is None
    assert parameter_modality("hsi_encoder.reduce.0.weight") == "hsi"
