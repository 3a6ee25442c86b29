import base64
import json
import re

import pytest

from diffusion_lessons.book import interactive


def _payload(html):
    match = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def test_static_slider_holds_every_frame_in_order():
    frames = [bytes([i]) * 10 for i in range(4)]
    html = interactive.static_slider_html(frames, [0.0, 0.5, 1.0, 1.5], label="t", initial=2)
    data = _payload(html)
    assert [base64.b64decode(s.split(",", 1)[1]) for s in data["srcs"]] == frames
    assert data["texts"] == ["t = 0.00", "t = 0.50", "t = 1.00", "t = 1.50"]
    assert 'max="3"' in html and 'value="2"' in html
    # the initial frame is in the <img> itself, so the page shows it without JavaScript
    assert f'src="{data["srcs"][2]}"' in html
    # two sliders on one page do not share an id
    assert re.search(r'id="([^"]+)"', html).group(1) != re.search(
        r'id="([^"]+)"', interactive.static_slider_html(frames, [0, 1, 2, 3], label="t")
    ).group(1)


def test_static_slider_rejects_mismatched_input():
    with pytest.raises(ValueError, match="frames and values must be non-empty and of equal length"):
        interactive.static_slider_html([b"a"], [0.0, 1.0], label="t")
    with pytest.raises(ValueError, match=r"initial must lie in 0..0"):
        interactive.static_slider_html([b"a"], [0.0], label="t", initial=3)


def test_live_slider_renders_on_every_move():
    calls = []
    widget = interactive.live_slider(
        calls.append, min=0.0, max=1.0, step=0.1, value=0.3, description="t"
    )
    slider = widget.children[0]
    slider.value = 0.7
    assert calls == [0.3, 0.7]
    with pytest.raises(ValueError, match=r"value must lie in \[min, max\]"):
        interactive.live_slider(
            calls.append, min=0.0, max=1.0, step=0.1, value=2.0, description="t"
        )
