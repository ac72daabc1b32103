# Computes the reference for lora/tests/peft_smollm2.rs: an adapter written by Hugging Face PEFT, and
# greedy replies of SmolLM2-135M-Instruct with that adapter, by PEFT + transformers on PyTorch.
#
# The adapter is rank 1 on all seven projections (q, k, v, o, gate, up, down) of every layer, with
# lora_alpha 2 (scale 2). PEFT initialises lora_B to zero, which would make the adapter a no-op, so
# both factors are drawn from a seeded normal distribution (A with std 0.05, B with std 0.02: enough
# to change the replies). It is saved by PEFT's own `save_pretrained`, in float16 to keep the file
# small (0.6 MB); the same float16 values are what PyTorch runs, so nasc and PEFT use equal weights.
#
# Optionally, `--check-nasc DIR` loads an adapter that `nasc lm finetune` wrote into PEFT
# (`PeftModel.from_pretrained`) and prints its greedy reply to the first prompt, to compare by hand
# with `nasc lm generate --adapter DIR`: the other direction of the format.
#
#   python -m venv venv && venv/bin/pip install torch numpy transformers gguf accelerate peft
#   venv/bin/python lora/reference/smollm2_peft.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
#
# writes lora/reference/smollm2_peft_adapter/ and lora/reference/smollm2_peft.json. Loading the model
# and greedy decoding are smollm2_greedy.py's, imported from beside this file.
import argparse
import json
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from smollm2_greedy import greedy, load

MAX_NEW_TOKENS = 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PROMPTS = [
    "Here is a program:\n\n```\nnet {\n  conv(16, k=3)\n  relu\n  linear(classes)\n}\n```\n\n"
    "Reply with a unified diff that adds batch normalisation after the convolution.",
    "What is the capital of France?",
]

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--check-nasc", metavar="DIR", help="an adapter written by nasc to load with PEFT")
    args = parser.parse_args()
    tok, model, name = load(args.gguf)

    if args.check_nasc:
        tuned = PeftModel.from_pretrained(model, args.check_nasc)
        tuned.eval()
        case = greedy(tok, tuned, PROMPTS[0], MAX_NEW_TOKENS)
        print("PEFT with", args.check_nasc, "->", json.dumps(case["greedy_text"]))
        print("greedy ids", case["greedy_ids"])
        return

    config = LoraConfig(r=1, lora_alpha=2, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    tuned = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module_name, module in tuned.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a = module.lora_A["default"].weight
                b = module.lora_B["default"].weight
                # Round through float16 so the weights run here equal the ones saved.
                a.copy_((torch.randn(a.shape, generator=gen) * 0.05).half().float())
                b.copy_((torch.randn(b.shape, generator=gen) * 0.02).half().float())
    tuned.eval()
    adapter_dir = os.path.join(HERE, "smollm2_peft_adapter")
    cases = [greedy(tok, tuned, p, MAX_NEW_TOKENS) for p in PROMPTS]
    for c in cases:
        print(json.dumps(c["greedy_text"]))
    # Saved in float16: PEFT writes the dtype of the weights it holds.
    for _, module in tuned.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            module.lora_A["default"].half()
            module.lora_B["default"].half()
    tuned.save_pretrained(adapter_dir)
    import peft
    import transformers

    result = {
        "model": name,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": tok.eos_token_id,
        "computed_with": f"peft {peft.__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}, float32 CPU",
        "cases": cases,
    }
    out_path = os.path.join(HERE, "smollm2_peft.json")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", out_path, "and", adapter_dir)


if __name__ == "__main__":
    main()
