//! Which operations take a flow of each kind (feature maps, tokens, a vector) and give the same
//! kind back, found by checking probe programs with the checker itself rather than kept as a
//! second table beside the shape rules: a grammar that adds lines to a network can offer, at
//! each place, only what can stand there.

use super::binding;
use super::{check_source, Budget};
use crate::syntax::signature::{ArgDefault, Args, Signature, Ty, OPS};
use std::sync::OnceLock;

/// The kind of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Feature maps `[C,H,W]`.
    Map,
    /// Tokens `[N,D]`.
    Tokens,
    /// A vector `[D]`.
    Vector,
}

impl Kind {
    /// The kind of a shape table row's dimensions (`TableRow::dims`).
    pub fn of_dims(dims: &[u64]) -> Option<Kind> {
        match dims.len() {
            3 => Some(Kind::Map),
            2 => Some(Kind::Tokens),
            1 => Some(Kind::Vector),
            _ => None,
        }
    }

    const ALL: [Kind; 3] = [Kind::Map, Kind::Tokens, Kind::Vector];

    /// A probe's lines before the operation (making a flow of this kind) and after it (taking
    /// that kind to the classes).
    fn probe(self) -> (&'static str, &'static str) {
        match self {
            Kind::Map => ("conv(8, k=3, p=1)", "gap\n  linear(classes)"),
            Kind::Tokens => ("patch(16, k=4)", "token_mean\n  linear(classes)"),
            Kind::Vector => ("flatten\n  linear(16)", "linear(classes)"),
        }
    }
}

/// The built-in operations (not merges, which take values) that keep a flow of `kind`.
pub fn keeping(kind: Kind) -> &'static [&'static str] {
    static TABLE: OnceLock<Vec<(Kind, Vec<&'static str>)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        Kind::ALL.iter().map(|&k| (k, OPS.iter().filter(|s| keeps(s, k)).map(|s| s.name).collect())).collect()
    });
    table.iter().find(|(k, _)| *k == kind).map(|(_, ops)| ops.as_slice()).unwrap_or(&[])
}

/// The built-in operations whose plain call leaves a flow of `kind` exactly as it was, shape
/// and all (`bn`, `relu`, `dropout`, `attn` on tokens): lines of these may go where the shape
/// must be kept (before a merge with a value bound earlier). Windows and widths (`conv`,
/// `maxpool`, `linear`) are not among them: those keep a shape only with some arguments.
pub fn preserving(kind: Kind) -> &'static [&'static str] {
    static TABLE: OnceLock<Vec<(Kind, Vec<&'static str>)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|&k| {
                let (before, after) = k.probe();
                // The value bound before the operation, added back after it: equal shapes only.
                // Integers are 2, which changes what a window can change (`maxpool(k=2)`).
                let bound = format!("{before}\n  y = identity");
                let ops =
                    OPS.iter().filter(|s| probe_with(s, (&bound, &format!("add(y)\n  {after}")), &[0])).map(|s| s.name);
                (k, ops.collect())
            })
            .collect()
    });
    table.iter().find(|(k, _)| *k == kind).map(|(_, ops)| ops.as_slice()).unwrap_or(&[])
}

/// The built-in operations (not merges) that take a flow of kind `from` to one of kind `to`
/// (`gap` and `flatten` take maps to a vector); none when the two are the same.
pub fn changing(from: Kind, to: Kind) -> &'static [&'static str] {
    static TABLE: OnceLock<Vec<(Kind, Kind, Vec<&'static str>)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut out = Vec::new();
        for &a in &Kind::ALL {
            for &b in &Kind::ALL {
                if a != b {
                    let ops = OPS.iter().filter(|s| probe(s, (a.probe().0, b.probe().1))).map(|s| s.name).collect();
                    out.push((a, b, ops));
                }
            }
        }
        out
    });
    table.iter().find(|(a, b, _)| (*a, *b) == (from, to)).map(|(_, _, ops)| ops.as_slice()).unwrap_or(&[])
}

/// Whether some plain call of `sig` checks between a flow of `kind` and a tail that needs it.
fn keeps(sig: &Signature, kind: Kind) -> bool {
    probe(sig, kind.probe())
}

/// Whether some plain call of `sig` checks between the lines `before` and `after` of a net.
fn probe(sig: &Signature, (before, after): (&str, &str)) -> bool {
    probe_with(sig, (before, after), &[0, 1])
}

/// [`probe`] with the given fills of required integers: 0, all 2; 1, 1, 2, 3, ... in order.
fn probe_with(sig: &Signature, (before, after): (&str, &str), fills: &[usize]) -> bool {
    let Args::Params { params, .. } = sig.args else { return false };
    let Some(binding) = binding::dataset("fashion-mnist") else { return false };
    // Required parameters all 2, or 1, 2, 3, ... in order (a slice needs lo < hi).
    fills.iter().any(|&fill| {
        let mut next = 0;
        let args: Vec<String> = params
            .iter()
            .filter(|p| matches!(p.default, ArgDefault::Required))
            .map(|p| {
                next += 1;
                let v = match p.ty {
                    Ty::Float | Ty::Prob => "0.5".to_string(),
                    Ty::Bool => "true".to_string(),
                    Ty::Int | Ty::Pad => (if fill == 0 { 2 } else { next }).to_string(),
                };
                format!("{}={v}", p.name)
            })
            .collect();
        let call = if args.is_empty() { sig.name.to_string() } else { format!("{}({})", sig.name, args.join(", ")) };
        let src = format!("net {{\n  {before}\n  {call}\n  {after}\n}}\n").replace("\n  \n", "\n");
        check_source(&src, binding, &Budget::default()).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_find_what_each_kind_takes() {
        let maps = keeping(Kind::Map);
        for op in ["conv", "bn", "relu", "maxpool", "dropout", "dwconv", "identity"] {
            assert!(maps.contains(&op), "{op} keeps maps: {maps:?}");
        }
        for op in ["linear", "flatten", "gap", "attn"] {
            assert!(!maps.contains(&op), "{op} does not keep maps");
        }
        let vectors = keeping(Kind::Vector);
        assert!(vectors.contains(&"linear") && vectors.contains(&"relu"), "{vectors:?}");
        assert!(!vectors.contains(&"maxpool") && !vectors.contains(&"conv"), "{vectors:?}");
        let tokens = keeping(Kind::Tokens);
        assert!(tokens.contains(&"attn") && tokens.contains(&"ln"), "{tokens:?}");
        let to_vector = changing(Kind::Map, Kind::Vector);
        assert!(to_vector.contains(&"gap") && to_vector.contains(&"flatten"), "{to_vector:?}");
        assert!(!to_vector.contains(&"conv") && !to_vector.contains(&"linear"), "{to_vector:?}");
        assert_eq!(changing(Kind::Map, Kind::Tokens), ["patch"]);
        assert!(changing(Kind::Vector, Kind::Map).is_empty());
    }

    #[test]
    fn preserving_ops_keep_the_shape_exactly() {
        let maps = preserving(Kind::Map);
        for op in ["bn", "relu", "dropout", "identity", "sigmoid"] {
            assert!(maps.contains(&op), "{op} keeps a map's shape: {maps:?}");
        }
        for op in ["conv", "maxpool", "adaptive_avgpool", "slice", "gap"] {
            assert!(!maps.contains(&op), "{op} can change a map's shape: {maps:?}");
        }
        let tokens = preserving(Kind::Tokens);
        assert!(tokens.contains(&"attn") && tokens.contains(&"ln") && !tokens.contains(&"cls_token"), "{tokens:?}");
        let vectors = preserving(Kind::Vector);
        assert!(vectors.contains(&"relu") && !vectors.contains(&"linear"), "{vectors:?}");
    }
}
