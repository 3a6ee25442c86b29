"""An MLP denoiser for 2-D (or flat) data, conditioned on the noise level through its embedding."""

from __future__ import annotations

from torch import Tensor, nn

from diffusion_lessons.nets.embedding import time_embedding


class MLPDenoiser(nn.Module):
    """f_θ(x_t, t) for flat data ``x: (B, D)`` and a scalar condition ``t: (B,)``; returns ``(B, D)``.

    The condition goes through :func:`~diffusion_lessons.nets.embedding.time_embedding` (after multiplying by ``t_scale``, so that
    t ∈ [0, 1] spans many periods) and an MLP, and is added to every hidden layer. What the output
    means (x_0, ε or the score) is up to the loss that trains it.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        t_scale: float = 1000.0,
    ):
        super().__init__()
        self.dim, self.emb_dim, self.t_scale = dim, emb_dim, t_scale
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.t_mlp(time_embedding(t * self.t_scale, self.emb_dim))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)
