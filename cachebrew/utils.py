"""TextBrewer's ``textbrewer.utils`` helpers that ported scripts call.

:func:`display_parameters` prints the parameter count and memory of a model per module, as
TextBrewer's does, so ``print(display_parameters(model, max_level=3)[0])`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class LayerNode:
    """One module in the parameter tree: its own name, full dotted name, counts and children."""

    name: str
    fullname: str
    num_params: int = 0
    num_bytes: int = 0
    children: dict[str, LayerNode] = field(default_factory=dict)

    def child(self, name: str) -> LayerNode:
        """The child called ``name``, created empty if missing."""
        if name not in self.children:
            prefix = f"{self.fullname}." if self.fullname != "model" else ""
            self.children[name] = LayerNode(name, f"{prefix}{name}")
        return self.children[name]

    def lines(self, max_level: int | None, level: int = 0) -> list[str]:
        """One indented ``name  params  MB`` line per node down to ``max_level``."""
        mb = self.num_bytes / 2**20
        rows = [f"{'  ' * level}{self.name:<{40 - 2 * level}} {self.num_params:>14,} {mb:>10.2f}"]
        if max_level is None or level < max_level:
            for node in self.children.values():
                rows += node.lines(max_level, level + 1)
        return rows


def display_parameters(
    model: torch.nn.Module | Mapping[str, torch.Tensor], max_level: int | None = None
) -> tuple[str, LayerNode]:
    """The numbers and memory of a model's parameters, per module (TextBrewer's helper).

    Args:
        model: a module, or a state dict.
        max_level: deepest level shown (None: all). The tree returned is always complete.

    Returns:
        A formatted table (``name``, ``#params``, ``MB``) and the root :class:`LayerNode`.
        Tensors shared under several names are counted once, as TextBrewer.

    Raises:
        TypeError: ``model`` is neither a module nor a mapping of tensors.
    """
    if isinstance(model, torch.nn.Module):
        state = model.state_dict()
    elif isinstance(model, Mapping):
        state = dict(model)
    else:
        raise TypeError(f"model should be a torch.nn.Module or a dict, got {type(model).__name__}")
    root = LayerNode("model", "model")
    seen: set[int] = set()
    for key, tensor in state.items():
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue
        seen.add(tensor.data_ptr())
        path = [root]
        for part in key.split("."):
            path.append(path[-1].child(part))
        for node in path:
            node.num_params += tensor.numel()
            node.num_bytes += tensor.numel() * tensor.element_size()
    header = f"{'layer':<40} {'#params':>14} {'MB':>10}"
    text = "\n".join([header, "-" * len(header), *root.lines(max_level)])
    return text, root
