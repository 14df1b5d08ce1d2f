//! Rewrite the Rust source burn-onnx (burn-import) generates so that the model runs on the any4
//! kernels: every `nn::Linear` field becomes an [`any4_burn::QLinear`], which the quantization
//! pass turns into an any4 layer.
//!
//! The generated code is regular: `use burn::nn::Linear;`, fields `linearN: Linear,`, built as
//! `LinearConfig::new(d_in, d_out).with_bias(b).init(device)`, called as `.forward(x)` (which
//! `QLinear` has too), and loaded from a burnpack file whose keys are module paths
//! (`linear3.weight`). The rewrite changes the fields' type and constructor, maps the stored
//! keys onto `QLinear`'s `Dense` variant (`linear3.Dense.weight`: burnpack paths keep enum
//! variants), and implements `QLinearContainer` for every struct holding linears (so
//! `quantize_model`, `Calibrator` and any4 checkpoints work on the model). Anything it does not
//! recognise is an error, not a silent partial rewrite.
//!
//! Used from build.rs (`#[path]`-included) after `burn_onnx::ModelGen` has run:
//! `std::fs::write(out, swap::qlinear_source(&std::fs::read_to_string(generated)?)?)`.

/// The generated source with `QLinear` in place of every `nn::Linear` (see the module docs).
pub fn qlinear_source(generated: &str) -> Result<String, String> {
    if !generated.contains("use burn::nn::Linear;") {
        return Err("no `use burn::nn::Linear;`: the model has no linear layer to swap".into());
    }
    let mut out = String::with_capacity(generated.len() + 1024);
    // (struct, fields holding linears or structs that do).
    let mut structs: Vec<(String, Vec<String>)> = Vec::new();
    let mut current: Option<String> = None;
    let mut linear_fields: Vec<String> = Vec::new();
    for line in generated.lines() {
        let trimmed = line.trim();
        if trimmed == "use burn::nn::Linear;" {
            out.push_str("use any4_burn::QLinear;\n");
            continue;
        }
        if trimmed == "use burn::nn::LinearConfig;" {
            continue;
        }
        if let Some(name) = trimmed
            .strip_prefix("pub struct ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            current = Some(name.to_string());
            structs.push((name.to_string(), Vec::new()));
        } else if line.starts_with('}') {
            current = None;
        }
        let mut line = line.to_string();
        if let (Some(_), Some((field, ty))) = (&current, field_of(trimmed)) {
            let holds_linears = structs.iter().any(|(s, f)| s == ty && !f.is_empty());
            let holder = structs.last_mut().expect("inside a struct");
            if ty == "Linear" {
                line = line.replace(": Linear,", ": QLinear,");
                holder.1.push(field.to_string());
                linear_fields.push(field.to_string());
            } else if holds_linears {
                holder.1.push(field.to_string());
            }
        }
        if line.contains("LinearConfig::new(") {
            line = rewrite_constructor(&line)?;
        }
        if line.contains("BurnpackStore::from_") {
            line = remap_store(&line, &linear_fields)?;
        }
        out.push_str(&line);
        out.push('\n');
    }
    if linear_fields.is_empty() {
        return Err("no `name: Linear,` field found in a generated struct".into());
    }
    out.push_str("\n// QLinearContainer: added by the any4 rewrite (swap.rs).\n");
    for (name, fields) in structs.iter().filter(|(_, f)| !f.is_empty()) {
        out.push_str(&format!(
            "any4_burn::impl_qlinear_container!({name} {{ {} }});\n",
            fields.join(", ")
        ));
    }
    Ok(out)
}

/// `name: Type,` → `(name, Type)`.
fn field_of(line: &str) -> Option<(&str, &str)> {
    let (name, ty) = line.strip_suffix(',')?.split_once(": ")?;
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_');
    (ident(name) && ident(ty)).then_some((name, ty))
}

/// `LinearConfig::new(a, b)[.with_bias(x)].init(device)` → `QLinear::init(a, b, x, device)`.
fn rewrite_constructor(line: &str) -> Result<String, String> {
    let start = line
        .find("LinearConfig::new(")
        .expect("checked by the caller");
    let rest = &line[start + "LinearConfig::new(".len()..];
    let (dims, rest) = rest
        .split_once(')')
        .ok_or_else(|| format!("unrecognised linear constructor: `{}`", line.trim()))?;
    let (bias, rest) = match rest.strip_prefix(".with_bias(") {
        Some(r) => r
            .split_once(')')
            .ok_or_else(|| format!("unrecognised linear constructor: `{}`", line.trim()))?,
        // LinearConfig's default.
        None => ("true", rest),
    };
    let (device, tail) = rest
        .strip_prefix(".init(")
        .and_then(|r| r.split_once(')'))
        .ok_or_else(|| {
            format!(
                "unrecognised linear constructor (only `.with_bias` is handled): `{}`",
                line.trim()
            )
        })?;
    Ok(format!(
        "{}QLinear::init({dims}, {bias}, {device}){tail}",
        &line[..start]
    ))
}

/// Load the stored `…linearN.weight|bias` into `QLinear`'s `Dense` variant.
fn remap_store(line: &str, fields: &[String]) -> Result<String, String> {
    let end = line
        .rfind(");")
        .ok_or_else(|| format!("unrecognised store construction: `{}`", line.trim()))?;
    let pattern = format!(
        "^((?:[A-Za-z0-9_]+\\\\.)*(?:{}))\\\\.(weight|bias)$",
        fields.join("|")
    );
    Ok(format!(
        "{}).with_remap_pattern(\"{pattern}\", \"${{1}}.Dense.${{2}}\");",
        &line[..end]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str = "\
use burn::prelude::*;
use burn::nn::Linear;
use burn::nn::LinearConfig;
use burn_store::BurnpackStore;

#[derive(Module, Debug)]
pub struct Model {
    constant1: burn::module::Param<Tensor<1>>,
    linear1: Linear,
    linear2: Linear,
    #[module(skip)]
    device: Device,
}
impl Model {
    pub fn from_file(file: &str, device: &Device) -> Self {
        let mut store = BurnpackStore::from_file(&file);
        todo!()
    }
    pub fn new(device: &Device) -> Self {
        let linear1 = LinearConfig::new(128, 64).with_bias(false).init(device);
        let linear2 = LinearConfig::new(64, 8).init(device);
        todo!()
    }
}
";

    #[test]
    fn fields_constructors_store_and_container() {
        let out = qlinear_source(GENERATED).unwrap();
        assert!(out.contains("use any4_burn::QLinear;") && !out.contains("LinearConfig"));
        assert!(out.contains("    linear1: QLinear,\n    linear2: QLinear,"));
        assert!(out.contains("let linear1 = QLinear::init(128, 64, false, device);"));
        assert!(out.contains("let linear2 = QLinear::init(64, 8, true, device);"));
        assert!(out.contains(
            r#"BurnpackStore::from_file(&file).with_remap_pattern("^((?:[A-Za-z0-9_]+\\.)*(?:linear1|linear2))\\.(weight|bias)$", "${1}.Dense.${2}");"#
        ));
        assert!(out.contains("any4_burn::impl_qlinear_container!(Model { linear1, linear2 });"));
    }

    #[test]
    fn unknown_shapes_are_errors() {
        let odd = GENERATED.replace(".with_bias(false)", ".with_initializer(x)");
        assert!(
            qlinear_source(&odd)
                .unwrap_err()
                .contains("only `.with_bias`")
        );
        assert!(qlinear_source("pub struct A {}").is_err());
    }
}
