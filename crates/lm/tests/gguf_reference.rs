//! Checks the GGUF reader against a file written by ggml-org's own Python package (tests/data/make_reference.py).
//! It must not need Python or the network: the file and gguf-py's dequantised values are committed beside it.

use nasc_lm::gguf::{GgmlType, GgufFile, Value};

fn reference() -> GgufFile {
    GgufFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference.gguf")).unwrap()
}

#[test]
fn metadata_written_by_gguf_py_reads_back() {
    let file = reference();
    assert_eq!(file.version(), 3);
    assert_eq!(file.get_str("general.architecture").unwrap(), "reference");
    assert_eq!(file.get("reference.pi"), Some(&Value::F64(std::f64::consts::PI)));
    let (_, primes) = file.get_array("reference.primes").unwrap();
    assert_eq!(primes, [Value::I32(2), Value::I32(3), Value::I32(5), Value::I32(7)]);
}

#[test]
fn dequantisation_matches_gguf_py_for_every_supported_type() {
    let file = reference();
    let types =
        [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::BF16];
    for ty in types {
        let name = ty.to_string();
        assert_eq!(file.tensor(&name).unwrap().ty, ty);
        let got = file.tensor_f32(&name).unwrap();
        let want = file.tensor_f32(&format!("{name}.want")).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // gguf-py may multiply the same factors in another order; allow the last bit or so.
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{name}[{i}]: got {g}, gguf-py gives {w}");
        }
    }
}
