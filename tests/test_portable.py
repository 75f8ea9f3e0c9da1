"""The strict mode's portable kernels compute what PyTorch's own do (values and gradients, float64,
to rounding), for every operation they replace. ``install`` is process-wide: a fresh process."""

import json
import subprocess
import sys

CHECK = r'''
import json, torch, torch.nn.functional as F
import fedrs.portable as portable

def run(fn, shapes):
    torch.manual_seed(0)  # svd_lowrank draws its sketch from the global generator
    ins = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    out = fn(*ins)
    grads = torch.autograd.grad((out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)).sum(),
                                ins, allow_unused=True)
    return [out.detach()] + [g for g in grads if g is not None]

pos = lambda x: x.abs() + 0.1
CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), [(4, 6, 7, 7), (5, 6, 3, 3), (5,)]),
    "conv2d_stride2": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(4, 6, 8, 8), (5, 6, 3, 3), (5,)]),
    "conv2d_groups": (lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2), [(4, 6, 7, 7), (4, 3, 3, 3), (4,)]),
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b), [(4, 6, 16), (12, 6, 1), (12,)]),
    "conv2d_no_bias": (lambda x, w: F.conv2d(x, w), [(3, 2, 5, 5), (4, 2, 3, 3)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(8, 6), (5, 6), (5,)]),
    "linear_3d": (lambda x, w, b: F.linear(x, w, b), [(2, 8, 6), (5, 6), (5,)]),
    "matmul_vector": (lambda a, v: a @ v, [(7, 5), (5,)]),
    "dot": (lambda a, b: torch.dot(a, b), [(9,), (9,)]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [(2, 4, 16, 8)] * 3),
    "fft2_c2c": (lambda x: torch.fft.ifft2(torch.fft.fft2(x, norm="ortho") * 1.5, norm="ortho").real, [(2, 3, 8, 8)]),
    "rfft2_c2r": (lambda x: torch.fft.irfft2(torch.fft.rfft2(x) * 2), [(2, 3, 8, 8)]),
    "unary": (lambda x: pos(x).sqrt() + x.exp() + pos(x).log() + x.sin() + x.cos() + x.tanh() + x.atan()
              + pos(x).log10() + x.expm1() + pos(x).log1p(), [(40,)]),
    "inplace_and_out": (lambda x: pos(x).clone().sqrt_() + torch.exp(x.detach(), out=torch.empty(40, dtype=x.dtype)),
                        [(40,)]),
    "einsum": (lambda a, b: torch.einsum("nc,ni,nj->cij", a, b, b), [(10, 3), (10, 4)]),
    "cholesky": (lambda a: torch.linalg.cholesky(a @ a.T + 4 * torch.eye(5, dtype=a.dtype)), [(5, 5)]),
    "qr": (lambda a: torch.cat([t.flatten() for t in torch.linalg.qr(a)]), [(7, 4)]),
    "svd_lowrank": (lambda a: (lambda u, s, v: u @ torch.diag(s) @ v.T)(*torch.svd_lowrank(a, q=3, niter=2)), [(9, 6)]),
    "svd_values": (lambda a: torch.linalg.svdvals(a), [(6, 4)]),
}
reference = {name: run(fn, shapes) for name, (fn, shapes) in CASES.items()}
portable.install()
worst = {}
for name, (fn, shapes) in CASES.items():
    got = run(fn, shapes)
    assert len(got) == len(reference[name]), name
    worst[name] = max(float((a - b).abs().max()) for a, b in zip(got, reference[name]))
print(json.dumps({"worst": worst, "installed": portable.installed()}))
'''


def test_portable_kernels_match_pytorchs_own_in_values_and_gradients():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["installed"]
    bad = {name: err for name, err in out["worst"].items() if not err < 1e-10}
    assert not bad, f"portable kernels that differ from PyTorch's beyond float64 rounding: {bad}"
