"""Tensors on the wire: the codec's output packed into Flower records, and back.

Weight updates travel as ``local − global`` for floating-point tensors (so error feedback and low
rank apply to the update, not the weights); exchanged features travel as they are; integer
tensors (counters) and tensors with non-finite values always travel raw. Per tensor the ArrayRecord holds ``name|raw``,
``name|dense`` or ``name|left`` + ``name|right`` (uint8 when quantised); a ConfigRecord holds the
shape and the quantisation constants.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedrs.federated.codec import CodecConfig, Encoded, ErrorFeedback, Quantised, decode

State = dict[str, torch.Tensor]


def payload_bytes(state: State) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def pack_tensors(tensors: State, cfg: CodecConfig | None, reference: State | None = None,
                 feedback: ErrorFeedback | None = None) -> tuple[ArrayRecord, ConfigRecord, int, int]:
    """Encode tensors (against ``reference`` when given: the update is what travels); returns the
    records, the dense byte count and the bytes as sent. ``cfg=None`` sends everything dense."""
    arrays, consts = ArrayRecord(), ConfigRecord()
    feedback = feedback or ErrorFeedback()
    dense_bytes = sent_bytes = 0
    for name, tensor in tensors.items():
        dense_bytes += tensor.numel() * tensor.element_size()
        # non-finite values travel raw, as they are: the codec cannot factor them (its SVD fails), and the
        # server's screening then rejects the update by name, as it does an uncompressed one
        if not torch.is_floating_point(tensor) or cfg is None or not torch.isfinite(tensor).all():
            arrays[f"{name}|raw"] = Array(np.ascontiguousarray(tensor.detach().cpu().numpy()))
            sent_bytes += tensor.numel() * tensor.element_size()
            continue
        value = tensor.float() - reference[name].float() if reference is not None else tensor.float()
        encoded = feedback.encode(name, value, cfg)
        consts[f"{name}|shape"] = list(encoded.shape)
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


def pack_exact(tensors: State, reference: State) -> tuple[ArrayRecord, ConfigRecord, int, int]:
    """Tensors that must arrive bit-exact, against ``reference`` (what the receiver holds): an
    unchanged tensor travels as an empty ``same`` marker, a changed one raw. Records, dense bytes,
    bytes as sent."""
    arrays, dense_bytes, sent_bytes = ArrayRecord(), 0, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        dense_bytes += size
        if name in reference and torch.equal(tensor, reference[name]):
            arrays[f"{name}|same"] = Array(np.zeros(0, dtype=np.uint8))
            continue
        arrays[f"{name}|raw"] = Array(np.ascontiguousarray(tensor.detach().cpu().numpy()))
        sent_bytes += size
    return arrays, ConfigRecord(), int(dense_bytes), int(sent_bytes)


def unpack_tensors(arrays: ArrayRecord, consts: ConfigRecord, reference: State | None = None) -> State:
    """Inverse of ``pack_tensors``: decoded values (plus ``reference`` for updates)."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        name, kind = key.rsplit("|", 1)
        parts.setdefault(name, {})[kind] = array.numpy()
    state: State = {}
    for name, part in parts.items():
        if "same" in part:  # pack_exact: the receiver's own copy
            assert reference is not None, f"{name}: an unchanged tensor needs the reference it is the same as"
            state[name] = reference[name].clone()
            continue
        if "raw" in part:
            state[name] = torch.from_numpy(np.array(part["raw"]))
            continue
        shape = tuple(int(v) for v in cast(list[int], consts[f"{name}|shape"]))
        if "dense" in part:
            encoded = Encoded(shape, dense=part["dense"])
        else:
            factors = {}
            for side in ("left", "right"):
                low = consts.get(f"{name}|{side}|low")
                factors[side] = (Quantised(part[side], float(str(low)), float(str(consts[f"{name}|{side}|scale"])))
                                 if low is not None else part[side])
            encoded = Encoded(shape, left=factors["left"], right=factors["right"])
        value = decode(encoded)
        state[name] = (reference[name].float() + value).to(reference[name].dtype) if reference is not None else value
    return state


def pack_update(local: State, reference: State, cfg: CodecConfig, feedback: ErrorFeedback
                ) -> tuple[ArrayRecord, ConfigRecord, int, int]:
    """A client's weights as ``local − reference`` through the codec with error feedback."""
    return pack_tensors(local, cfg, reference, feedback)


def unpack_update(arrays: ArrayRecord, consts: ConfigRecord, reference: State) -> State:
    return unpack_tensors(arrays, consts, reference)
