"""LLaVA-1.5 model: config, Llama + CLIP + projector, the multimodal splice, the checkpoint loader."""
from llava.model.builder import load_pretrained_model
from llava.model.config import LlavaConfig
from llava.model.llava_llama import LlavaLlamaForCausalLM, LlavaLlamaModel

__all__ = ["LlavaConfig", "LlavaLlamaModel", "LlavaLlamaForCausalLM", "load_pretrained_model"]
