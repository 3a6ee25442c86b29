"""Sliders that work everywhere.

- :func:`static_slider` shows precomputed frames behind an HTML range input and a few lines of
  JavaScript: it needs no kernel, so it works in the built HTML book, in Jupyter and in Colab.
- :func:`live_slider` recomputes a figure on every move with ipywidgets: it needs a kernel
  (Jupyter, Colab) and can show any value, not only the precomputed ones.
"""

from __future__ import annotations

import base64
import html
import json
import uuid
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt

SLIDER_CLASS = "dl-slider"
"""CSS class of a static slider's outer element (the browser test looks for it)."""


def static_slider_html(
    frames: Sequence[bytes],
    values: Sequence[float],
    *,
    label: str,
    fmt: str = "{:.2f}",
    initial: int = 0,
    caption: str = "",
) -> str:
    """HTML for a slider over precomputed PNG ``frames``, one per entry of ``values``.

    Moving the slider to position i shows ``frames[i]`` and the text ``label = fmt(values[i])``.
    The first frame is in the HTML itself, so a reader without JavaScript still sees a picture.
    """
    if len(frames) == 0 or len(frames) != len(values):
        raise ValueError(
            f"frames and values must be non-empty and of equal length, got {len(frames)} frames "
            f"and {len(values)} values"
        )
    if not 0 <= initial < len(frames):
        raise ValueError(f"initial must lie in 0..{len(frames) - 1}, got {initial}")
    uid = f"{SLIDER_CLASS}-{uuid.uuid4().hex[:10]}"
    srcs = ["data:image/png;base64," + base64.b64encode(f).decode("ascii") for f in frames]
    texts = [f"{label} = {fmt.format(v)}" for v in values]
    payload = json.dumps({"srcs": srcs, "texts": texts})
    esc_label = html.escape(label)
    return f"""<div class="{SLIDER_CLASS}" id="{uid}" style="margin:0.5em 0">
<label style="display:flex;align-items:center;gap:0.8em;font-family:sans-serif">
<span>{esc_label}</span>
<input type="range" min="0" max="{len(frames) - 1}" step="1" value="{initial}" aria-label="{esc_label}" style="flex:1;max-width:420px">
<output class="{SLIDER_CLASS}-value">{html.escape(texts[initial])}</output>
</label>
<img class="{SLIDER_CLASS}-frame" src="{srcs[initial]}" alt="{html.escape(caption or label)}" style="max-width:100%;display:block;margin-top:0.3em">
<script type="application/json" class="{SLIDER_CLASS}-data">{payload}</script>
<script>
(function () {{
  var root = document.getElementById("{uid}");
  var data = JSON.parse(root.querySelector(".{SLIDER_CLASS}-data").textContent);
  var input = root.querySelector("input");
  var img = root.querySelector("img");
  var out = root.querySelector("output");
  function show() {{
    var i = parseInt(input.value, 10);
    img.src = data.srcs[i];
    out.textContent = data.texts[i];
  }}
  input.addEventListener("input", show);
  input.addEventListener("change", show);
}})();
</script>
</div>"""


def static_slider(frames: Sequence[bytes], values: Sequence[float], **kwargs):
    """Display object for :func:`static_slider_html` (shown as HTML in Jupyter and the book)."""
    from IPython.display import HTML

    return HTML(static_slider_html(frames, values, **kwargs))


def live_slider(
    render: Callable[[float], None],
    *,
    min: float,
    max: float,
    step: float,
    value: float,
    description: str,
):
    """An ipywidgets slider that calls ``render(value)`` (which draws a matplotlib figure) on each move.

    Returns the widget (a ``VBox`` of the slider and an output area); display it as a cell's
    last expression. It needs a running kernel: in the static book use :func:`static_slider`.
    """
    import ipywidgets as widgets

    if not min <= value <= max:
        raise ValueError(f"value must lie in [min, max] = [{min}, {max}], got {value}")
    slider = widgets.FloatSlider(
        value=value, min=min, max=max, step=step, description=description, continuous_update=False
    )
    out = widgets.Output()

    def update(_change=None) -> None:
        with out:
            out.clear_output(wait=True)
            render(slider.value)
            plt.show()

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, out])
