"""The ``cpu`` platform for verl 0.9.1, which registers only GPU/NPU platforms and otherwise falls
back to ``nvidia`` (so ``trainer.device=cpu`` alone changes nothing).

verl asks its platform for the device name, the collective backend, a ``torch.cuda``-like module
(memory statistics, RNG state, streams, ``empty_cache``) and the Ray resource its workers need.
Two of the answers are deliberate:

* ``current_device()`` is ``"cpu"``, not an index: verl uses it as a device
  (``tensor.to(get_device_id())``, ``FSDP(device_id=...)``), where ``0`` would mean ``cuda:0``.
* The Ray resource is ``"GPU"``: verl's ``ResourcePoolManager`` always asks Ray for GPUs, so a CPU
  job declares logical ones (``ray_kwargs.ray_init.num_gpus``), one per FSDP rank. Ray hands
  them out like any custom resource; nothing touches a real device.
"""

from __future__ import annotations

import functools
import os
import types
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed
from verl.plugin.platform import PlatformBase, PlatformRegistry, get_platform, set_platform

PLATFORM_NAME = "cpu"


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory: what ``torch.cuda.mem_get_info`` reports for a GPU."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_AVPHYS_PAGES"), page * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not Linux: verl only logs these numbers
        return 0, 0


class CPUDeviceModule(types.ModuleType):
    """What verl calls on ``get_torch_device()`` (its ``torch.cuda``), answered for the host.

    Streams, events and ``synchronize`` come from ``torch.cpu``; memory statistics are zero (verl
    only logs them); RNG state is torch's CPU generator; device selection is a no-op. Anything
    else raises ``AttributeError`` as ``torch.cpu`` does, so a new CUDA-only call fails loudly."""

    def __init__(self) -> None:
        super().__init__("verl_trace_cpu_device")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    # device selection: there is one device
    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def is_available(self) -> bool:
        return True

    def set_device(self, device: Any) -> None:
        return None

    def get_device_name(self, device: Any = None) -> str:
        return "cpu"

    # memory: nothing to free, nothing to count
    def empty_cache(self) -> None:
        return None

    def ipc_collect(self) -> None:
        return None

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        return None

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        return None

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        return _host_memory()

    def memory_allocated(self, device: Any = None) -> int:
        return 0

    def memory_reserved(self, device: Any = None) -> int:
        return 0

    def max_memory_allocated(self, device: Any = None) -> int:
        return 0

    def max_memory_reserved(self, device: Any = None) -> int:
        return 0

    # RNG: the CPU generator is the only one
    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)


DEVICE_MODULE = CPUDeviceModule()


class PlatformCPU(PlatformBase):
    """verl's platform interface on the host CPU (registered as ``cpu`` by ``register_platform``)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: the platform is chosen explicitly (VERL_TRACE_CPU / VERL_PLATFORM).
        return False

    def current_device(self) -> str:  # type: ignore[override]  # a device, see the module docstring
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # logical GPUs: see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def _dedupe_backend(init_process_group):
    """verl builds the backend string ``"cpu:gloo,{device}:{backend}"``, which on this platform is
    ``"cpu:gloo,cpu:gloo"``; torch refuses the repeated device type. Pass it on without repeats."""

    @functools.wraps(init_process_group)
    def wrapper(*args: Any, backend: Any = None, **kwargs: Any) -> Any:
        if isinstance(backend, str) and "," in backend:
            backend = ",".join(dict.fromkeys(part.strip() for part in backend.split(",")))
        return init_process_group(*args, backend=backend, **kwargs)

    wrapper.verl_trace_dedupe = True
    return wrapper


_engines_registered = False


def _register_engines() -> None:
    """verl registers its FSDP engines for ``cuda`` and ``npu`` only; they run unchanged on CPU
    with FSDP2 (``strategy=fsdp2``). Registered through verl's public ``EngineRegistry.register``."""
    global _engines_registered
    if _engines_registered:
        return
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
        FSDPEngineWithLMHead
    )
    EngineRegistry.register(model_type="value_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
        FSDPEngineWithValueHead
    )
    _engines_registered = True


def register_platform() -> PlatformBase:
    """Register ``cpu`` in verl's platform registry and make it this process's platform; wrap
    ``init_process_group``; register verl's FSDP engines for it. Idempotent."""
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    # verl resolves its platform once per process, from VERL_PLATFORM first; child processes
    # inherit the variable. Should something have resolved it already, replace it.
    os.environ["VERL_PLATFORM"] = PLATFORM_NAME
    if not isinstance(get_platform(), PlatformCPU):
        set_platform(PlatformCPU())
    if not getattr(torch.distributed.init_process_group, "verl_trace_dedupe", False):
        torch.distributed.init_process_group = _dedupe_backend(torch.distributed.init_process_group)
    _register_engines()
    return get_platform()
