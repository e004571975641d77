"""GPU inventory: NVML on a real machine, or the simulated inventory a config declares.

There is no CPU fallback: without NVIDIA GPUs and without a simulated inventory, pools of real
engines refuse to start (ORCH-1102).
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_orch.config import SimulatedGpu

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    vram_total_bytes: int
    vram_used_bytes: int
    utilization_pct: float
    simulated: bool
    compute_capability: str | None = None
    #: Degrees Celsius where NVML reports it.
    temperature_c: float | None = None

    @property
    def vram_free_bytes(self) -> int:
        return max(0, self.vram_total_bytes - self.vram_used_bytes)


@dataclass(frozen=True, slots=True)
class GpuInventory:
    gpus: tuple[Gpu, ...]
    simulated: bool
    #: Why NVML found nothing, for the fail-fast message.
    problem: str | None = None

    def by_index(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus)


def simulated_inventory(gpus: list[SimulatedGpu]) -> GpuInventory:
    return GpuInventory(
        tuple(
            Gpu(g.index, g.name, g.vram_mb * MIB, 0, 0.0, simulated=True)
            for g in sorted(gpus, key=lambda g: g.index)
        ),
        simulated=True,
    )


def nvml_inventory() -> GpuInventory:
    """Ask the NVIDIA driver; an empty inventory carries the reason in ``problem``."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a hard dependency
        return GpuInventory((), simulated=False, problem="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuInventory(
            (),
            simulated=False,
            problem=f"NVML could not start ({exc}); is the NVIDIA driver installed and loaded?",
        )
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            try:
                temperature: float | None = float(
                    pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
                )
            except pynvml.NVMLError:
                # Some boards (and vGPUs) have no readable sensor.
                temperature = None
            gpus.append(
                Gpu(
                    index,
                    name if isinstance(name, str) else name.decode(),
                    int(memory.total),
                    int(memory.used),
                    float(util.gpu),
                    simulated=False,
                    compute_capability=f"{major}.{minor}",
                    temperature_c=temperature,
                )
            )
        problem = None if gpus else "NVML reports no NVIDIA GPU on this machine"
        return GpuInventory(tuple(gpus), simulated=False, problem=problem)
    finally:
        pynvml.nvmlShutdown()
