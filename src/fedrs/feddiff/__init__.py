"""FedDiff (../shared/spec/feddiff.md), whole: stage 1's denoising U-Net and DDPM (``unet``,
``diffusion``, ``ddpm.DiffusionAlgorithm``), stage 2's diffusion features computed on the clients
(``features``), stage 3's dual-branch classifier with bilateral connections (``classifier``,
``algorithm.FedDiffAlgorithm``) and the server's round protocol for it (``relay.PartnerRelay``).
The torch modules import neither Kedro nor Flower; the Kedro nodes are in ``fedrs.pipelines.feddiff``.
"""
