"""When the values of a model input are checked: on the host, never as a device sync in a forward pass.

Shapes and dtypes are free to check and always are. Values (ids in the vocabulary, patch lengths that sum to
the sequence length) cost a host read of the tensor: free on the CPU, a sync on an accelerator, and a graph
break under ``torch.compile``. So they are checked where the data is made (the data pipeline builds valid
ids and lengths on the host) or when a caller asks with ``check=True``.
"""

from __future__ import annotations

import torch


def checks_values(check: bool | None, *tensors: torch.Tensor) -> bool:
    """Whether to check the values of ``tensors``.

    ``check``: True always (on an accelerator this waits for the device, and a compiled graph breaks
    there); False never (the caller made or checked them on the host); None: when it costs nothing, that
    is every tensor is on the CPU and no graph is being traced.
    """
    if check is not None:
        return bool(check)
    return not torch.compiler.is_compiling() and all(t.device.type == "cpu" for t in tensors)
