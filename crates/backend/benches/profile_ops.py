"""Where a CPU training run spends its time, per operation, from a perf recording.

    RAYON_NUM_THREADS=2 perf record -e cpu-clock -F 299 --call-graph dwarf,32768 -o run.data \
        target/release/deps/train-HASH --one smallcnn 28 64 --seconds 3
    perf script -i run.data | python3 benches/profile_ops.py --from 0.4 --to TRAIN_S

--from/--to keep the samples of the training loop (seconds after the first sample: skip loading
the data, stop before evaluation; the benchmark prints train_s). Each sample is charged to the
first operation, in the order below, that its call stack names; rayon's worker threads do not
show their caller, so kernels are recognised by their own names.
"""
import argparse
import collections
import re
import sys

OPERATIONS = [
    ("conv: forward (nasc, im2col + gemm, fused bias/relu/2x2 max pool)", r"nasc::compile::cpu::forward"),
    ("conv: weight + input gradients (nasc)", r"nasc::compile::cpu::backward|ConvOp"),
    ("max pool: forward (nasc)", r"nasc::compile::cpu::pool_forward"),
    ("max pool: backward (nasc)", r"MaxPoolOp"),
    ("conv: input gradient (Burn, transposed conv)", r"conv_transpose"),
    ("conv: forward and weight gradient (Burn, im2col conv)", r"conv3d_impl|conv3d_f32|conv3d_1x1"),
    ("max pool: forward (Burn)", r"max_pool3d_with_indices|max_pool2d_with_indices_f32"),
    ("max pool: backward (Burn)", r"max_pool3d_backward|max_pool2d_backward"),
    ("linear layers (matmul)", r"burn_flex::ops::matmul"),
    ("optimizer (Adam/SGD)", r"burn_optim|Adam|adam::|Sgd|sgd::"),
    ("relu", r"relu"),
    ("other elementwise", r"unary_op|binary_op|scalar_op|mask_"),
    ("reductions (loss, softmax, sums)", r"reduce|sum_dim|softmax|cross_entropy|argmax"),
    ("copies and layout changes", r"to_contiguous|StridedIter|copy_contiguous|permute|cat_"),
    ("batches from the dataset", r"nasc_datasets|fill_batch"),
    ("page faults and allocation", r"page_fault|__memset|clear_page|mmap|munmap|malloc|free"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="start", type=float, default=0.0)
    ap.add_argument("--to", dest="end", type=float, default=float("inf"))
    a = ap.parse_args()
    counts, total, t0 = collections.Counter(), 0, None
    for record in sys.stdin.read().split("\n\n"):
        lines = record.strip("\n").split("\n")
        m = re.search(r" (\d+\.\d+):", lines[0]) if lines else None
        if not m:
            continue
        t = float(m.group(1))
        t0 = t if t0 is None else t0
        if not a.start <= t - t0 <= a.end:
            continue
        total += 1
        stack = "\n".join(lines[1:])
        name = next((name for name, pattern in OPERATIONS if re.search(pattern, stack)), "other")
        counts[name] += 1
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f}%  {name}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
