"""Model cards for zoo entries: `README.md` and the `predictions.png` thumbnail."""

from cards.render import render_card, write_card
from cards.thumbnail import draw_predictions

__all__ = ["draw_predictions", "render_card", "write_card"]
