"""The networks of the book, one file per family; algorithms never import them (they take callables).

    embeddings   sinusoidal timestep embedding, time(+label) MLP     mlp          MLP denoiser / classifier (2-D data)
    unet         the small UNet (ResBlocks, attention, labels)       classifier   noise-conditional image classifier
    attention    self/cross-attention, the spatial transformer       text         a small text encoder (captions)
    autoencoders KL and VQ autoencoders (latent diffusion)           dit          DiT: adaLN-Zero and its rivals (09)
    mmdit        the MM-DiT joint block of SD3 (09)                  relight      IC-Light's relighting UNet (10)
"""

from .attention import CrossAttention, SpatialTransformer, group_norm
from .autoencoders import Decoder, Encoder, KLAutoencoder, VQAutoencoder, kl_to_standard_normal
from .classifier import Classifier
from .dit import DiT, dit_to_diffusers
from .embeddings import timestep_embedding
from .mlp import MLPClassifier, MLPDenoiser
from .mmdit import JointBlock, MMDiT
from .relight import PhiNet, RelightUNet, widen_input, widen_input_conv
from .text import TextEncoder
from .unet import ResBlock, UNet

__all__ = [
    "timestep_embedding", "MLPDenoiser", "MLPClassifier", "UNet", "ResBlock", "Classifier",
    "CrossAttention", "SpatialTransformer", "group_norm", "TextEncoder",
    "Encoder", "Decoder", "KLAutoencoder", "VQAutoencoder", "kl_to_standard_normal",
    "DiT", "dit_to_diffusers", "JointBlock", "MMDiT",
    "RelightUNet", "PhiNet", "widen_input", "widen_input_conv",
]
