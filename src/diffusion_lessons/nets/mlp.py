"""An MLP denoiser for 2-D (or flat) data, conditioned on the noise level through its embedding."""

from __future__ import annotations

from torch import Tensor, nn

from diffusion_lessons.nets.embedding import embed_noise


class MLPDenoiser(nn.Module):
    """f_θ(x_t, c) for flat data ``x: (B, D)`` and a noise input ``c: (B,)``; returns ``(B, D)``.

    ``c × noise_scale`` goes through :func:`~diffusion_lessons.nets.embedding.time_embedding` and
    an MLP, and is added to every hidden layer. The default ``noise_scale=1000`` is for c = t = i/T
    ∈ [0, 1] (chapters 4–5); chapters 6–7 feed c = λ with ``noise_scale=4``
    (:mod:`~diffusion_lessons.nets.embedding`). What the output means (x_0, ε or the score) is up
    to the wrapper and the loss that trains it (:mod:`~diffusion_lessons.denoisers.denoiser`).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        noise_scale: float = 1000.0,
    ):
        super().__init__()
        self.dim, self.emb_dim, self.noise_scale = dim, emb_dim, noise_scale
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if c.shape != (x.shape[0],):
            raise ValueError(
                f"the noise input c must have shape (B,) = ({x.shape[0]},), got {tuple(c.shape)}"
            )
        # the sinusoids are float32 (as in training); the MLP runs in the dtype of x (float64 to code)
        emb = embed_noise(self.t_mlp, c * self.noise_scale, self.emb_dim, x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)
