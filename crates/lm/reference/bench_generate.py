# Generation throughput of Hugging Face transformers on PyTorch's CPU path, for comparison with
# `nasc lm generate --json` on the same GGUF file and prompt: one stream, and N samples of one prompt.
#
#   venv/bin/python lora/reference/bench_generate.py SmolLM2-135M-Instruct.Q4_1.gguf [tokens] [samples]
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "Write a Python function that returns the n-th Fibonacci number."


def main():
    path = sys.argv[1]
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, prompt {ids.shape[1]} tokens")
    for n, new in [(1, tokens), (samples, tokens // 2)]:
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=n > 1,
                temperature=0.8 if n > 1 else None,
                top_p=0.95 if n > 1 else None,
                num_return_sequences=n,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=tok.eos_token_id,
            )
        seconds = time.perf_counter() - start
        generated = (out.shape[1] - ids.shape[1]) * n
        print(f"n={n}: {generated} tokens in {seconds:.2f} s = {generated / seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
