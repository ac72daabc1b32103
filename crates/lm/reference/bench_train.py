# LoRA training throughput of Hugging Face transformers + PEFT on PyTorch's CPU path, for comparison
# with the training line of `cargo run --release -p nasc-lm --example bench_generate`: the same
# model file, the same four chat examples, batch 2, rank 32 / alpha 32 / dropout 0.05 on all seven
# projections, AdamW, loss on the assistant tokens, tokens counted as nasc counts them (padded
# batch rows times their length).
#
#   OMP_NUM_THREADS=2 venv/bin/python lora/reference/bench_train.py SmolLM2-135M-Instruct.Q4_1.gguf [epochs]
import os
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

BODY = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 3


def encode(tok, i):
    prompt = [{"role": "user", "content": f"Example {i}: write fib in Python."}]
    reply = {"role": "assistant", "content": f"```python\n{BODY}```"}
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(prompt + [reply], tokenize=False)
    ids = tok(whole, add_special_tokens=False).input_ids[:256]
    n_head = len(tok(head, add_special_tokens=False).input_ids)
    labels = [-100] * n_head + ids[n_head:]
    return ids, labels[: len(ids)]


def main():
    path = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=32, lora_dropout=0.05, target_modules=targets))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    examples = [encode(tok, i) for i in range(4)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, example lengths {[len(e[0]) for e in examples]}")
    torch.manual_seed(0)
    for epoch in range(epochs):
        tokens, start = 0, time.perf_counter()
        for b in range(0, len(examples), 2):
            batch = examples[b : b + 2]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([e[0] + [tok.eos_token_id] * (width - len(e[0])) for e in batch])
            labels = torch.tensor([e[1] + [-100] * (width - len(e[1])) for e in batch])
            mask = torch.tensor([[1] * len(e[0]) + [0] * (width - len(e[0])) for e in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            tokens += ids.numel()
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s, loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
