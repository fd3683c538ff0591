"""The engine's parameters: Llama-2-7B on one H100 80 GB by default (design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

# Calibrated factors (sim/README.md "Calibration"; `infergate-sim calibrate`):
# SLOWDOWN fits the measured vLLM v1 points (no LoRA); LORA_ENABLED_FACTOR is what the
# upstream benchmark deployment (LoRA enabled, older vLLM) adds, fit to 26 req/s on ShareGPT.
DEFAULT_SLOWDOWN = 0.79
DEFAULT_LORA_ENABLED_FACTOR = 1.82


@dataclass
class EngineConfig:
    """Engine parameters. Defaults: Llama-2-7B on one H100 80 GB (design.md §5)."""

    model: str = "meta-llama/Llama-2-7b-hf"
    kv_capacity_tokens: int = 119_408  # 7,463 blocks x 16
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # or "priority" (lower value first; preemption stays newest-first)
    # LoRA
    enable_lora: bool = True
    max_loras: int = 4
    max_cpu_loras: int = 12
    lora_load_s: float = 0.050  # disk -> CPU cache (rank-16 q/k/v/o adapter of a 7B model, ~30-70 MB)
    lora_activate_s: float = 0.002  # CPU cache -> a GPU slot
    lora_enabled_factor: float = DEFAULT_LORA_ENABLED_FACTOR  # step-time factor when enable_lora
    # Timing
    slowdown: float = DEFAULT_SLOWDOWN
    api_overhead_s: float = 0.010
    step_base_s: float = 0.0005
    step_floor_s: float = 0.0056
    step_n_base_s: float = 0.0010
    step_per_token_s: float = 20e-6
    step_per_ctx_s: float = 0.196e-6

    @property
    def num_gpu_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def validate(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (as vLLM requires)")
        if self.block_size <= 0 or self.num_gpu_blocks <= 0:
            raise ValueError("block_size and kv_capacity_tokens must be positive")
        if self.max_loras < 1 or self.max_cpu_loras < self.max_loras:
            raise ValueError("need 1 <= max_loras <= max_cpu_loras")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy must be 'fcfs' or 'priority'")

    def step_time(self, n_tokens: int, ctx_tokens: int) -> float:
        """Duration of one step scheduling ``n_tokens`` over ``ctx_tokens`` of context."""
        busy = self.step_n_base_s + self.step_per_token_s * n_tokens
        if busy < self.step_floor_s:
            busy = self.step_floor_s
        return self.factor * (self.step_base_s + busy + self.step_per_ctx_s * ctx_tokens)

    @property
    def factor(self) -> float:
        """The total step-time multiplier: slowdown, times lora_enabled_factor with LoRA on."""
        return self.slowdown * (self.lora_enabled_factor if self.enable_lora else 1.0)
