# Computes the reference for lora/tests/generate_smollm2.rs: greedy replies of SmolLM2-135M-Instruct
# to a few chat prompts, by Hugging Face transformers on PyTorch, from the same GGUF file nasc loads.
#
# transformers reads the GGUF itself (dequantising with ggml-org's `gguf` package and undoing
# llama.cpp's q/k row permutation in its own code), builds its tokenizer and chat template from
# the file's metadata, and runs its own LlamaForCausalLM in float32: nothing is shared with nasc.
#
#   python -m venv venv && venv/bin/pip install torch numpy transformers gguf accelerate
#   venv/bin/python lora/reference/smollm2_greedy.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
#
# writes lora/reference/smollm2_greedy.json.
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MAX_NEW_TOKENS = 48

PROMPTS = [
    "Here is a program:\n\n```\nnet {\n  conv(16, k=3)\n  relu\n  linear(classes)\n}\n```\n\n"
    "Reply with a unified diff that adds batch normalisation after the convolution.",
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
]


def load(path):
    """The tokenizer and float32 model transformers builds from the GGUF file, and its name."""
    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    return tok, model, name


def greedy(tok, model, prompt, max_new_tokens):
    """The templated prompt, its ids, the first step's top-5 logits and the greedy reply."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
        top = torch.topk(logits, 5)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
    new = out[0, ids.shape[1]:].tolist()
    return {
        "prompt": prompt,
        "prompt_text": text,
        "prompt_ids": ids[0].tolist(),
        "top5_first_step": [[int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())],
        "greedy_ids": new,
        "greedy_text": tok.decode(new, skip_special_tokens=True),
    }


def main():
    torch.manual_seed(0)
    tok, model, name = load(sys.argv[1])
    cases = []
    for prompt in PROMPTS:
        cases.append(greedy(tok, model, prompt, MAX_NEW_TOKENS))
        print(json.dumps(cases[-1]["greedy_text"]))
    import transformers
    result = {
        "model": name,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": tok.eos_token_id,
        "computed_with": f"transformers {transformers.__version__}, torch {torch.__version__}, float32 CPU",
        "cases": cases,
    }
    out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_greedy.json")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
