//! The checked graph as a Burn module: one layer per node, and a forward pass that walks the nodes.
//! Built at run time from a `Graph`; it decides no shapes (the checker did) and never reads source text.

use super::cpu::{self, Epilogue};
use super::init::{self, Init};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d,
};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;
use nasc_lang::check::{Graph, Op, Shape};

/// The parameters of one node. Nodes without parameters have none (`None`
/// in [`GraphModel::layers`]).
#[derive(Module, Debug)]
pub enum Layer<B: Backend> {
    /// `conv`, `dwconv`, and the projection of `patch`.
    Conv(Conv2d<B>),
    BatchNorm(BatchNorm<B>),
    LayerNorm(LayerNorm<B>),
    GroupNorm(GroupNorm<B>),
    Linear(Linear<B>),
    Attention(Attention<B>),
    /// `cls_token` (`[1,1,D]`) or `pos_embed` (`[1,N,D]`).
    Embedding(Param<Tensor<B, 3>>),
}

impl<B: Backend> Layer<B> {
    /// Trainable parameters, as PyTorch's `parameters()` counts them: Burn's
    /// `num_params` less batch norm's running mean and variance (buffers in PyTorch).
    pub fn trainable_params(&self) -> usize {
        match self {
            Layer::BatchNorm(bn) => bn.gamma.shape().num_elements() + bn.beta.shape().num_elements(),
            other => other.num_params(),
        }
    }
}

/// Multi-head self-attention with the parameters of PyTorch's
/// `nn.MultiheadAttention`: a packed `in_proj_weight [3D, D]` (q, k, v rows),
/// `in_proj_bias [3D]`, and `out_proj` `[D, D]` + `[D]`, all `(out, in)`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub in_proj_weight: Param<Tensor<B, 2>>,
    pub in_proj_bias: Option<Param<Tensor<B, 1>>>,
    pub out_proj_weight: Param<Tensor<B, 2>>,
    pub out_proj_bias: Option<Param<Tensor<B, 1>>>,
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `[B, N, D] → [B, N, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let d = x.dims()[2];
        // q, k and v each from its own rows of the packed weight, as [B, N, D] with the heads
        // side by side in the last dimension, which the attention reads in place (no split into
        // [B, H, N, dh] and merge back) and whose output the out-projection takes as it is.
        let part = |i: usize| {
            let weight = self.in_proj_weight.val().narrow(0, i * d, d).transpose();
            let bias = self.in_proj_bias.as_ref().map(|b| b.val().narrow(0, i * d, d));
            tokens_linear(x.clone(), weight, bias)
        };
        let out = cpu::attention(part(0), part(1), part(2), self.heads);
        tokens_linear(out, self.out_proj_weight.val().transpose(), self.out_proj_bias.as_ref().map(|b| b.val()))
    }
}

/// Layer norm's ε (PyTorch's and Burn's default).
const LN_EPSILON: f64 = 1e-5;

/// `ln` over the last dimension of `x`: one operation in training on the CPU backend, else
/// Burn's layer norm.
fn layer_norm<B: Backend, const D: usize>(ln: &LayerNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(beta) = &ln.beta {
        if let Some(y) = cpu::layer_norm_train(&x, &ln.gamma.val(), &beta.val(), LN_EPSILON) {
            return y;
        }
    }
    ln.forward(x)
}

/// A linear layer (`weight` `[in, out]`) applied to every token of `[B, N, in]`, as one matrix
/// product of `[B·N, in]` rather than `B` products of `[N, in]` (a broadcast weight).
fn tokens_linear<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
    let [b, n, d] = x.dims();
    let out = weight.dims()[1];
    cpu::linear(x.reshape([b * n, d]), weight, bias).reshape([b, n, out])
}

/// What the forward pass needs of one node besides its parameters.
#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub shape: Shape,
    /// The last node that reads this node's output (`usize::MAX` for the
    /// network's output, `0` for a value nobody reads, which is never computed).
    pub last_use: usize,
    /// A convolution whose only reader is a `relu` applies it itself (one pass over the output
    /// instead of two, forward and backward); that `relu` step then passes its input through.
    /// Likewise a 2x2 stride-2 max pool that is the only reader of a convolution (or of its fused
    /// ReLU): the convolution pools each item's output while it is in cache.
    pub epilogue: Epilogue,
}

/// A checked graph compiled to a Burn module, generic over the backend.
///
/// Training and inference follow Burn's convention: on an autodiff backend
/// batch norm uses batch statistics (and updates its running ones) and
/// dropout drops; on a plain backend (`model.valid()`) batch norm uses the
/// running statistics and dropout is the identity.
#[derive(Module, Debug)]
pub struct GraphModel<B: Backend> {
    /// One entry per node of the graph, in node order.
    pub layers: Vec<Option<Layer<B>>>,
    #[module(skip)]
    pub steps: Vec<Step>,
    #[module(skip)]
    pub output: usize,
}

/// A value flowing between nodes, with the batch axis first.
#[derive(Clone, Debug)]
pub enum Value<B: Backend> {
    /// `[B, C, H, W]`
    Map(Tensor<B, 4>),
    /// `[B, N, D]`
    Tokens(Tensor<B, 3>),
    /// `[B, D]`
    Vector(Tensor<B, 2>),
}

/// Applies an expression generic over the rank to whichever tensor a value holds.
macro_rules! each {
    ($value:expr, |$t:ident| $body:expr) => {
        match $value {
            Value::Map($t) => Value::Map($body),
            Value::Tokens($t) => Value::Tokens($body),
            Value::Vector($t) => Value::Vector($body),
        }
    };
}

impl<B: Backend> Value<B> {
    fn map(self) -> Tensor<B, 4> {
        match self {
            Value::Map(t) => t,
            other => unreachable!("the checker gives this operation feature maps, got {other:?}"),
        }
    }
    fn tokens(self) -> Tensor<B, 3> {
        match self {
            Value::Tokens(t) => t,
            other => unreachable!("the checker gives this operation tokens, got {other:?}"),
        }
    }
    fn vector(self) -> Tensor<B, 2> {
        match self {
            Value::Vector(t) => t,
            other => unreachable!("the checker gives this operation a vector, got {other:?}"),
        }
    }
    /// Feature maps as they are; a `[B, C]` vector as `[B, C, 1, 1]` (for gating).
    fn into_map(self) -> Tensor<B, 4> {
        match self {
            Value::Vector(t) => {
                let [b, c] = t.dims();
                t.reshape([b, c, 1, 1])
            }
            other => other.map(),
        }
    }
}

/// Builds the module for a checked graph, its parameters initialised as
/// PyTorch initialises the same layers, from `seed` (see [`init`]):
///
/// * `conv`, `linear`, `patch`: weight and bias U(±1/√fan_in) (PyTorch's
///   `kaiming_uniform_(a=√5)` and its bias rule);
/// * `bn`, `ln`, `gn`: weight 1, bias 0;
/// * `attn`: `in_proj_weight` Xavier-uniform, `in_proj_bias` 0, `out_proj`
///   weight U(±1/√D), bias 0 (`nn.MultiheadAttention._reset_parameters`);
/// * `cls_token`: zeros (torchvision's ViT `class_token`);
/// * `pos_embed`: N(0, 0.02²), which is timm's `trunc_normal_(std=0.02)`
///   (truncated at ±2, i.e. ±100σ: never in practice) and torchvision's
///   `normal_(std=0.02)` alike.
pub fn build<B: Backend>(graph: &Graph, seed: u64, device: &B::Device) -> GraphModel<B> {
    let mut init = Init::new(seed);
    let layers = graph
        .nodes
        .iter()
        .map(|node| {
            let input = node.inputs.first().map(|&i| graph.nodes[i].shape);
            layer(&node.op, input, node.shape, &mut init, device)
        })
        .collect();
    let mut last_use = vec![0; graph.nodes.len()];
    for (id, node) in graph.nodes.iter().enumerate() {
        for &i in &node.inputs {
            last_use[i] = id;
        }
    }
    last_use[graph.output] = usize::MAX;
    let mut steps: Vec<Step> = graph
        .nodes
        .iter()
        .zip(last_use)
        .map(|(n, last_use)| Step {
            op: n.op.clone(),
            inputs: n.inputs.clone(),
            shape: n.shape,
            last_use,
            epilogue: Epilogue::default(),
        })
        .collect();
    let mut readers = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for &i in &node.inputs {
            readers[i] += 1;
        }
    }
    for id in 0..steps.len() {
        if let (Op::Relu, &[conv]) = (&steps[id].op, &steps[id].inputs[..]) {
            let fuses = matches!(steps[conv].op, Op::Conv { .. } | Op::BatchNorm);
            if fuses && readers[conv] == 1 && conv != graph.output {
                steps[conv].epilogue.relu = true;
                steps[id].op = Op::Identity;
            }
        }
    }
    for id in 0..steps.len() {
        if let (&Op::MaxPool { k: 2, s: 2, p: 0, ceil }, &[input]) = (&steps[id].op, &steps[id].inputs[..]) {
            // The convolution itself, or the identity its fused ReLU left behind.
            let conv = match (&steps[input].op, &steps[input].inputs[..]) {
                (Op::Identity, &[conv]) if steps[conv].epilogue.relu => conv,
                _ => input,
            };
            let alone = readers[input] == 1 && readers[conv] == 1 && input != graph.output && conv != graph.output;
            if matches!(steps[conv].op, Op::Conv { .. }) && alone && steps[conv].epilogue.pool.is_none() {
                steps[conv].epilogue.pool = Some(ceil);
                steps[id].op = Op::Identity;
            }
        }
    }
    GraphModel { layers, steps, output: graph.output }
}

fn layer<B: Backend>(
    op: &Op,
    input: Option<Shape>,
    output: Shape,
    init: &mut Init,
    device: &B::Device,
) -> Option<Layer<B>> {
    let cin = input.map_or(0, |s| s.channels() as usize);
    Some(match *op {
        Op::Conv { out, k, s, p, d, g, bias } => Layer::Conv(conv(
            cin,
            out as usize,
            k as usize,
            s as usize,
            p as usize,
            d as usize,
            g as usize,
            bias,
            init,
            device,
        )),
        Op::Patch { d, k } => Layer::Conv(conv(cin, d as usize, k as usize, k as usize, 0, 1, 1, true, init, device)),
        Op::BatchNorm => Layer::BatchNorm(BatchNormConfig::new(cin).init(device)),
        Op::LayerNorm => Layer::LayerNorm(LayerNormConfig::new(cin).with_epsilon(LN_EPSILON).init(device)),
        Op::GroupNorm { groups } => Layer::GroupNorm(GroupNormConfig::new(groups as usize, cin).init(device)),
        Op::Linear { out, bias } => {
            let (fin, fout) = (cin, out as usize);
            let weight = init::param(init.fan_in_uniform(fin * fout, fin), [fin, fout], device);
            let bias = bias.then(|| init::param(init.fan_in_uniform(fout, fin), [fout], device));
            Layer::Linear(Linear { weight, bias })
        }
        Op::Attention { heads, bias } => {
            let d = cin;
            Layer::Attention(Attention {
                in_proj_weight: init::param(init.xavier_uniform(3 * d * d, d, 3 * d), [3 * d, d], device),
                in_proj_bias: bias.then(|| init::zeros([3 * d], device)),
                out_proj_weight: init::param(init.fan_in_uniform(d * d, d), [d, d], device),
                out_proj_bias: bias.then(|| init::zeros([d], device)),
                heads: heads as usize,
            })
        }
        Op::ClsToken => Layer::Embedding(init::zeros([1, 1, cin], device)),
        Op::PosEmbed => {
            let Shape::Tokens { n, d } = output else { unreachable!("pos_embed gives tokens") };
            let (n, d) = (n as usize, d as usize);
            Layer::Embedding(init::param(init.normal(n * d, 0.02), [1, n, d], device))
        }
        _ => return None,
    })
}

#[allow(clippy::too_many_arguments)]
fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
    bias: bool,
    init: &mut Init,
    device: &B::Device,
) -> Conv2d<B> {
    let fan_in = cin / g * k * k;
    let weight = init::param(init.fan_in_uniform(cout * fan_in, fan_in), [cout, cin / g, k, k], device);
    let bias = bias.then(|| init::param(init.fan_in_uniform(cout, fan_in), [cout], device));
    Conv2d {
        weight,
        bias,
        stride: [s, s],
        kernel_size: [k, k],
        dilation: [d, d],
        groups: g,
        padding: PaddingConfig2d::Explicit(p, p, p, p),
    }
}

impl<B: Backend> GraphModel<B> {
    /// Trainable parameters (what the checker and PyTorch count); Burn's
    /// `num_params` also counts batch norm's running statistics.
    pub fn trainable_params(&self) -> usize {
        self.layers.iter().flatten().map(Layer::trainable_params).sum()
    }

    /// `[batch, C, H, W]` images to `[batch, classes]` logits.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut values: Vec<Option<Value<B>>> = vec![None; self.steps.len()];
        values[0] = Some(Value::Map(images));
        for (id, step) in self.steps.iter().enumerate().skip(1) {
            if step.last_use == 0 {
                continue; // read by nothing: a dead branch
            }
            let args: Vec<Value<B>> = step
                .inputs
                .iter()
                .enumerate()
                .map(|(pos, &i)| {
                    // Move a value into its last reader so its buffer can be
                    // reused in place and freed; otherwise share it.
                    let last_read =
                        self.steps[i].last_use == id && !step.inputs[pos + 1..].contains(&i) && i != self.output;
                    let slot = &mut values[i];
                    if last_read { slot.take() } else { slot.clone() }
                        .expect("a node's inputs come before it and are alive")
                })
                .collect();
            values[id] = Some(self.apply(id, step, args));
        }
        values[self.output].take().expect("the output is computed").vector()
    }

    fn apply(&self, id: usize, step: &Step, mut args: Vec<Value<B>>) -> Value<B> {
        let layer = self.layers[id].as_ref();
        let x = args.remove(0);
        match (&step.op, layer) {
            (&Op::Conv { s, p, d, g, .. }, Some(Layer::Conv(c))) => {
                let options = ConvOptions::new([s as usize; 2], [p as usize; 2], [d as usize; 2], g as usize);
                Value::Map(cpu::conv2d(
                    x.map(),
                    c.weight.val(),
                    c.bias.as_ref().map(|b| b.val()),
                    options,
                    step.epilogue,
                ))
            }
            (Op::BatchNorm, Some(Layer::BatchNorm(bn))) => match x {
                Value::Map(t) => Value::Map(batch_norm(bn, t, step.epilogue.relu)),
                Value::Vector(t) => Value::Vector(batch_norm(bn, t, step.epilogue.relu)),
                Value::Tokens(_) => unreachable!("the checker refuses bn on tokens"),
            },
            (Op::LayerNorm, Some(Layer::LayerNorm(ln))) => match x {
                // Over channels at each position, as ConvNeXt's LayerNorm2d.
                Value::Map(t) => Value::Map(layer_norm(ln, t.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])),
                Value::Tokens(t) => Value::Tokens(layer_norm(ln, t)),
                Value::Vector(t) => Value::Vector(layer_norm(ln, t)),
            },
            (Op::GroupNorm { .. }, Some(Layer::GroupNorm(gn))) => Value::Map(gn.forward(x.map())),
            (Op::Relu, _) => each!(x, |t| activation::relu(t)),
            (Op::Relu6, _) => each!(x, |t| cpu::activation(t, cpu::Activation::Relu6)),
            (Op::LeakyRelu { slope }, _) => each!(x, |t| activation::leaky_relu(t, *slope)),
            (Op::Elu { alpha }, _) => each!(x, |t| activation::elu(t, *alpha)),
            (Op::Gelu, _) => each!(x, |t| cpu::activation(t, cpu::Activation::Gelu)),
            (Op::Silu, _) => each!(x, |t| cpu::activation(t, cpu::Activation::Silu)),
            (Op::Hardswish, _) => each!(x, |t| activation::hard_swish(t)),
            (Op::Hardsigmoid, _) => each!(x, |t| activation::hard_sigmoid(t, 1.0 / 6.0, 0.5)),
            (Op::Sigmoid, _) => each!(x, |t| cpu::activation(t, cpu::Activation::Sigmoid)),
            (Op::Tanh, _) => each!(x, |t| activation::tanh(t)),
            (Op::Identity, _) => x,
            (Op::Dropout { p }, _) => each!(x, |t| dropout(t, *p)),
            (Op::MaxPool { k, s, p, ceil }, _) => {
                let (k, s, p) = (*k as usize, *s as usize, *p as usize);
                Value::Map(cpu::max_pool2d(x.map(), k, s, p, *ceil))
            }
            (Op::AvgPool { k, s, p, ceil }, _) => {
                let (k, s, p) = (*k as usize, *s as usize, *p as usize);
                // count_include_pad = true, PyTorch's default.
                Value::Map(avg_pool2d(x.map(), [k, k], [s, s], [p, p], true, *ceil))
            }
            (Op::GlobalAvgPool, _) => {
                let [b, c, h, w] = x.clone().map().dims();
                Value::Vector(x.map().reshape([b, c, h * w]).mean_dim(2).reshape([b, c]))
            }
            (Op::AdaptiveAvgPool { s }, _) => Value::Map(adaptive_avg_pool2d(x.map(), [*s as usize, *s as usize])),
            (Op::Flatten, _) => match x {
                Value::Map(t) => {
                    let [b, c, h, w] = t.dims();
                    Value::Vector(t.reshape([b, c * h * w]))
                }
                Value::Tokens(t) => {
                    let [b, n, d] = t.dims();
                    Value::Vector(t.reshape([b, n * d]))
                }
                v @ Value::Vector(_) => v,
            },
            (Op::Linear { .. }, Some(Layer::Linear(l))) => match x {
                Value::Vector(t) => Value::Vector(cpu::linear(t, l.weight.val(), l.bias.as_ref().map(|b| b.val()))),
                Value::Tokens(t) => Value::Tokens(tokens_linear(t, l.weight.val(), l.bias.as_ref().map(|b| b.val()))),
                Value::Map(_) => unreachable!("the checker refuses linear on feature maps"),
            },
            (Op::Add, _) => args.into_iter().fold(x, |acc, y| match (acc, y) {
                (Value::Map(a), Value::Map(b)) => Value::Map(a + b),
                (Value::Tokens(a), Value::Tokens(b)) => Value::Tokens(a + b),
                (Value::Vector(a), Value::Vector(b)) => Value::Vector(a + b),
                _ => unreachable!("the checker gives add equal shapes"),
            }),
            (Op::Mul, _) => {
                if matches!(step.shape, Shape::Map { .. }) {
                    // Per-channel gates broadcast over the maps: a `[B, C]` vector (or a
                    // `[B, C, 1, 1]` map) times maps, in either order.
                    Value::Map(args.into_iter().fold(x.into_map(), |acc, y| {
                        let y = y.into_map();
                        let ([b, c, h, w], [_, _, gh, gw]) = (acc.dims(), y.dims());
                        match ((h, w) == (1, 1), (gh, gw) == (1, 1)) {
                            (false, true) => cpu::gate(acc, y.reshape([b, c])),
                            (true, false) => cpu::gate(y, acc.reshape([b, c])),
                            _ => acc * y,
                        }
                    }))
                } else {
                    args.into_iter().fold(x, |acc, y| match (acc, y) {
                        (Value::Tokens(a), Value::Tokens(b)) => Value::Tokens(a * b),
                        (Value::Vector(a), Value::Vector(b)) => Value::Vector(a * b),
                        _ => unreachable!("the checker gives mul equal shapes or gates"),
                    })
                }
            }
            (Op::Concat, _) => match x {
                Value::Map(t) => {
                    Value::Map(cpu::concat(std::iter::once(t).chain(args.into_iter().map(Value::map)).collect()))
                }
                Value::Vector(t) => Value::Vector(Tensor::cat(
                    std::iter::once(t).chain(args.into_iter().map(Value::vector)).collect(),
                    1,
                )),
                Value::Tokens(_) => unreachable!("the checker refuses concat of tokens"),
            },
            (Op::Shuffle { groups }, _) => Value::Map(cpu::shuffle(x.map(), *groups as usize)),
            (Op::Slice { lo, hi }, _) => {
                let (lo, len) = (*lo as usize, (*hi - *lo) as usize);
                match x {
                    Value::Map(t) => Value::Map(t.narrow(1, lo, len)),
                    Value::Vector(t) => Value::Vector(t.narrow(1, lo, len)),
                    Value::Tokens(_) => unreachable!("the checker refuses slice of tokens"),
                }
            }
            (Op::Patch { .. }, Some(Layer::Conv(c))) => {
                let t = c.forward(x.map());
                let [b, d, h, w] = t.dims();
                Value::Tokens(t.reshape([b, d, h * w]).swap_dims(1, 2))
            }
            (Op::ClsToken, Some(Layer::Embedding(cls))) => {
                let t = x.tokens();
                let batch = t.dims()[0];
                Value::Tokens(Tensor::cat(vec![cls.val().repeat_dim(0, batch), t], 1))
            }
            (Op::PosEmbed, Some(Layer::Embedding(pos))) => {
                // As [B, N·D] + [1, N·D]: a shared row, which the CPU backend broadcasts fast.
                let t = x.tokens();
                let [b, n, d] = t.dims();
                Value::Tokens((t.reshape([b, n * d]) + pos.val().reshape([1, n * d])).reshape([b, n, d]))
            }
            (Op::Attention { .. }, Some(Layer::Attention(a))) => Value::Tokens(a.forward(x.tokens())),
            (Op::TokenMean, _) => {
                let t = x.tokens();
                let [b, _, d] = t.dims();
                Value::Vector(t.mean_dim(1).reshape([b, d]))
            }
            (Op::ClsPool, _) => {
                let t = x.tokens();
                let [b, _, d] = t.dims();
                Value::Vector(t.narrow(1, 0, 1).reshape([b, d]))
            }
            (op, layer) => unreachable!(
                "node {id} ({op}) was built with {}",
                if layer.is_some() { "the wrong layer" } else { "no layer" }
            ),
        }
    }
}

/// Batch norm over the channels (axis 1) of `[B, C, …]`, as PyTorch's
/// `BatchNorm1d/2d`: while training (an autodiff backend) it normalises with
/// the batch's biased variance and moves the running statistics by momentum
/// 0.1 (the running variance unbiased, as PyTorch keeps it); otherwise it
/// uses the running statistics. Burn's `BatchNorm` holds the parameters;
/// this forward pass replaces its own, which broadcasts `[1, C, 1, 1]`
/// statistics, a pattern the CPU backend runs far slower than per-row
/// `[B, C, 1]` ones (see BENCHMARKS.md). On the CPU backend, training runs the fused kernel of
/// [`cpu::batch_norm_train`]. A fused ReLU (`relu`) follows.
fn batch_norm<B: Backend, const D: usize>(bn: &BatchNorm<B>, x: Tensor<B, D>, relu: bool) -> Tensor<B, D> {
    let dims = x.dims();
    let (b, c) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    let x = x.reshape([b, c, rest]);
    let per_row = |t: Tensor<B, 1>| t.reshape([1, c, 1]).repeat_dim(0, b);
    let device = x.device();
    if let Some((y, mean, var)) = cpu::batch_norm_train(&x, &bn.gamma.val(), &bn.beta.val(), bn.epsilon, relu) {
        let n = (b * rest) as f64;
        let m = bn.momentum;
        let vector = |v: Vec<f32>| Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(v, [c]), &device);
        let unbiased = vector(var).mul_scalar(n / (n - 1.0).max(1.0));
        bn.running_mean.update(bn.running_mean.value_sync().mul_scalar(1.0 - m) + vector(mean).mul_scalar(m));
        bn.running_var.update(bn.running_var.value_sync().mul_scalar(1.0 - m) + unbiased.mul_scalar(m));
        return y.reshape(dims);
    }
    let (mean, var) = if B::ad_enabled(&x.device()) {
        let n = (b * rest) as f64;
        let mean = x.clone().sum_dim(2).sum_dim(0).div_scalar(n).reshape([c]);
        let centred = x.clone() - per_row(mean.clone());
        let var = centred.square().sum_dim(2).sum_dim(0).div_scalar(n).reshape([c]);
        let m = bn.momentum;
        let unbiased = var.clone().detach().mul_scalar(n / (n - 1.0).max(1.0));
        bn.running_mean.update(bn.running_mean.value_sync().mul_scalar(1.0 - m) + mean.clone().detach().mul_scalar(m));
        bn.running_var.update(bn.running_var.value_sync().mul_scalar(1.0 - m) + unbiased.mul_scalar(m));
        (mean, var)
    } else {
        (bn.running_mean.value_sync(), bn.running_var.value_sync())
    };
    // (x - mean) / √(var + ε) · γ + β, as x · scale + shift.
    let scale = bn.gamma.val() / var.add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val() - mean * scale.clone();
    let y = (x * per_row(scale) + per_row(shift)).reshape(dims);
    if relu {
        activation::relu(y)
    } else {
        y
    }
}

/// Inverted dropout while training (an autodiff backend), the identity otherwise.
fn dropout<B: Backend, const D: usize>(t: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    if p == 0.0 || !B::ad_enabled(&t.device()) {
        return t;
    }
    cpu::dropout(t, p)
}
