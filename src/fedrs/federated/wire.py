"""Weight updates on the wire: the codec's output packed into Flower records, and back.

A client sends ``local − global`` for floating-point tensors (so error feedback and low rank apply
to the update, not the weights) and other tensors (counters) as they are. Per tensor the
ArrayRecord holds ``name|dense`` or ``name|left`` + ``name|right`` (uint8 when quantised), and a
ConfigRecord holds the quantisation constants.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedrs.federated.codec import CodecConfig, Encoded, ErrorFeedback, Quantised, decode

State = dict[str, torch.Tensor]


def payload_bytes(state: State) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def pack_update(local: State, reference: State, cfg: CodecConfig, feedback: ErrorFeedback
                ) -> tuple[ArrayRecord, ConfigRecord, int, int]:
    """Encode ``local`` against ``reference``; returns records, dense bytes and bytes as sent."""
    arrays, consts = ArrayRecord(), ConfigRecord()
    dense_bytes = sent_bytes = 0
    for name, tensor in local.items():
        dense_bytes += tensor.numel() * tensor.element_size()
        if not torch.is_floating_point(tensor):
            arrays[f"{name}|raw"] = Array(tensor.cpu().numpy())
            sent_bytes += tensor.numel() * tensor.element_size()
            continue
        encoded = feedback.encode(name, tensor.float() - reference[name].float(), cfg)
        sent_bytes += encoded.nbytes
        if encoded.dense is not None:
            arrays[f"{name}|dense"] = Array(encoded.dense)
            continue
        for side in ("left", "right"):
            factor = getattr(encoded, side)
            if isinstance(factor, Quantised):
                arrays[f"{name}|{side}"] = Array(factor.codes)
                consts[f"{name}|{side}|low"] = factor.low
                consts[f"{name}|{side}|scale"] = factor.scale
            else:
                arrays[f"{name}|{side}"] = Array(np.ascontiguousarray(factor))
    return arrays, consts, int(dense_bytes), int(sent_bytes)


def unpack_update(arrays: ArrayRecord, consts: ConfigRecord, reference: State) -> State:
    """Rebuild the client's local tensors: reference + decoded update (raw tensors as sent)."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        name, kind = key.rsplit("|", 1)
        parts.setdefault(name, {})[kind] = array.numpy()
    state: State = {}
    for name, part in parts.items():
        if "raw" in part:
            state[name] = torch.from_numpy(np.array(part["raw"]))
            continue
        shape = tuple(reference[name].shape)
        if "dense" in part:
            encoded = Encoded(shape, dense=part["dense"])
        else:
            factors = {}
            for side in ("left", "right"):
                values = part[side]
                low = consts.get(f"{name}|{side}|low")
                factors[side] = Quantised(values, float(low), float(consts[f"{name}|{side}|scale"])) if low is not None else values
            encoded = Encoded(shape, left=factors["left"], right=factors["right"])
        state[name] = (reference[name].float() + decode(encoded)).to(reference[name].dtype)
    return state
