from pathlib import Path

from service.inference.vllm_engine import VllmEngineConfig, engine_arguments, pick_engine_cpus


def test_engine_takes_the_last_cpus_and_leaves_the_first_to_training():
    assert pick_engine_cpus([0, 1, 2, 3], 1) == (3,)
    assert pick_engine_cpus([0, 1, 2, 3], 2) == (2, 3)
    assert pick_engine_cpus([4, 9], 2) == (4, 9)


def test_engine_arguments_enable_lora_with_the_configured_limits():
    config = VllmEngineConfig(
        Path("/m"),
        max_loras=3,
        max_cpu_loras=5,
        max_lora_rank=32,
        max_model_len=512,
        cpu_ids=(1,),
        kv_cache_gib=2,
        lora_target_modules=("down_proj", "q_proj"),
    )
    args = engine_arguments(config)
    assert args["model"] == "/m"
    assert args["enable_lora"] is True
    assert (args["max_loras"], args["max_cpu_loras"]) == (3, 5)
    assert (args["max_lora_rank"], args["max_model_len"]) == (32, 512)
    assert args["dtype"] == "bfloat16"
    assert args["kv_cache_memory_bytes"] == 2 * 2**30
    assert args["lora_target_modules"] == ["down_proj", "q_proj"]  # never the output head
    assert args["scheduling_policy"] == "priority"
    assert (args["gpu_memory_utilization"], args["enable_sleep_mode"]) == (0.5, False)
