//! Which top-level input fields a pipeline can observe, so readers may skip the rest
//! while parsing (projection pushdown).
//!
//! The analysis walks the pipeline's JSON and is deliberately conservative: every
//! `"$field"` string and every field named by `$match`, `$sort` or an inclusion
//! `$project` counts as used, and it stops at the first stage that builds new documents
//! from scratch (`$group`, an inclusion `$project`, `$count`, ...). Anything it does not
//! understand (`$$ROOT`, `$$CURRENT`, `$redact`, `$facet`, an unknown stage) means "all
//! fields". Reading more fields than needed is only slower; reading fewer would be wrong.

use crate::value::{Str, Value};

/// The top-level fields a pipeline reads, or `None` when it may read any field.
pub fn input_fields(stages: &[Value]) -> Option<Vec<Str>> {
    let mut fields: Vec<Str> = Vec::new();
    for stage in stages {
        let (name, spec) = stage.as_document()?.iter().next()?;
        match name.as_str() {
            "$match" => {
                collect_query_keys(spec, &mut fields);
                collect_paths(spec, &mut fields)?;
            }
            "$sort" => {
                for (k, _) in spec.as_document()?.iter() {
                    add(&mut fields, k);
                }
            }
            "$addFields" | "$set" | "$unwind" | "$limit" | "$skip" | "$unset"
            | "$setWindowFields" => {
                if name == "$setWindowFields" {
                    if let Some(sort) = spec.as_document().and_then(|d| d.get("sortBy")) {
                        for (k, _) in sort.as_document()?.iter() {
                            add(&mut fields, k);
                        }
                    }
                }
                collect_paths(spec, &mut fields)?;
            }
            "$project" if is_inclusion_projection(spec) => {
                add(&mut fields, "_id");
                for (k, v) in spec.as_document()?.iter() {
                    if matches!(v, Value::Bool(true)) || v.as_f64().is_some_and(|n| n != 0.0) {
                        add(&mut fields, k);
                    } else if let Value::Document(_) = v {
                        // Nested inclusion `{a: {b: 1}}` or an expression: keep the key.
                        add(&mut fields, k);
                    }
                }
                collect_paths(spec, &mut fields)?;
                return Some(fields);
            }
            "$group" | "$count" | "$bucket" | "$bucketAuto" | "$sortByCount" | "$replaceRoot"
            | "$replaceWith" => {
                collect_paths(spec, &mut fields)?;
                return Some(fields);
            }
            // A window's results come from its inner pipeline: the window reads what the
            // inner pipeline reads, plus its own expressions (partitionBy, timeField).
            "$tumblingWindow" | "$hoppingWindow" | "$sessionWindow" => {
                let d = spec.as_document()?;
                for (k, v) in d.iter() {
                    if k != "pipeline" {
                        collect_paths(v, &mut fields)?;
                    }
                }
                for f in input_fields(d.get("pipeline")?.as_array()?)? {
                    add(&mut fields, &f);
                }
                return Some(fields);
            }
            _ => return None,
        }
    }
    // The output documents carry every input field.
    None
}

/// The top-level fields an expression reads, or `None` when it may read any.
pub fn expression_fields(expr: &Value) -> Option<Vec<Str>> {
    let mut fields = Vec::new();
    collect_paths(expr, &mut fields)?;
    Some(fields)
}

fn add(fields: &mut Vec<Str>, path: &str) {
    let top = path.split('.').next().unwrap_or(path);
    if !fields.iter().any(|f| f == top) {
        fields.push(Str::from(top));
    }
}

/// `{a: 1, b: {c: 1}}` with no exclusions (other than `_id: 0`) at any depth: such a
/// projection builds its output from the named fields only.
fn is_inclusion_projection(spec: &Value) -> bool {
    fn walk(d: &crate::value::Document, top: bool, includes: &mut bool) -> bool {
        for (k, v) in d.iter() {
            match v {
                Value::Document(nested)
                    if nested.keys().next().is_some_and(|k| !k.starts_with('$')) =>
                {
                    if !walk(nested, false, includes) {
                        return false;
                    }
                }
                Value::Bool(false) => {
                    if !(top && k == "_id") {
                        return false;
                    }
                }
                v if v.as_f64() == Some(0.0) => {
                    if !(top && k == "_id") {
                        return false;
                    }
                }
                _ => *includes = true,
            }
        }
        true
    }
    let mut includes = false;
    spec.as_document()
        .is_some_and(|d| walk(d, true, &mut includes))
        && includes
}

/// Adds the first segment of every `"$field.path"` string; fails (→ all fields) on
/// `$$ROOT` / `$$CURRENT`, which expose the whole document.
fn collect_paths(v: &Value, fields: &mut Vec<Str>) -> Option<()> {
    match v {
        Value::String(s) => {
            if let Some(var) = s.strip_prefix("$$") {
                let name = var.split('.').next().unwrap_or(var);
                if name == "ROOT" || name == "CURRENT" {
                    return None;
                }
            } else if let Some(path) = s.strip_prefix('$') {
                add(fields, path);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_paths(item, fields)?;
            }
        }
        Value::Document(d) => {
            // The short form `{$getField: <name>}` reads a field of `$$CURRENT` by name.
            if let Some(arg) = d.get("$getField") {
                if !arg.as_document().is_some_and(|a| a.contains_key("input")) {
                    return None;
                }
            }
            for (k, item) in d.iter() {
                // `$top`/`$bottom`/`$topN`/`$bottomN` name their sort fields without `$`.
                if let ("sortBy", Value::Document(sort)) = (k.as_str(), item) {
                    for (field, _) in sort.iter() {
                        add(fields, field);
                    }
                }
                collect_paths(item, fields)?;
            }
        }
        _ => {}
    }
    Some(())
}

/// Every non-operator key inside a query filter names a field (inner `$elemMatch` keys
/// too — over-inclusion is harmless).
fn collect_query_keys(v: &Value, fields: &mut Vec<Str>) {
    match v {
        Value::Document(d) => {
            for (k, item) in d.iter() {
                if !k.starts_with('$') {
                    add(fields, k);
                }
                collect_query_keys(item, fields);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_query_keys(item, fields);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_value;

    fn fields(pipeline: &str) -> Option<Vec<String>> {
        let v = parse_value(pipeline).unwrap();
        input_fields(v.as_array().unwrap()).map(|f| f.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn group_closes_the_field_set() {
        assert_eq!(
            fields(
                r#"[{"$match": {"status": "PAID"}}, {"$group": {"_id": "$customerId", "n": {"$sum": "$orderValue"}}}, {"$sort": {"x": 1}}]"#
            ),
            Some(vec![
                "status".into(),
                "customerId".into(),
                "orderValue".into()
            ])
        );
    }

    #[test]
    fn inclusion_projection_keeps_id_and_named_fields() {
        assert_eq!(
            fields(
                r#"[{"$match": {"$or": [{"a.b": 1}, {"c": {"$gt": 2}}]}}, {"$project": {"d": 1, "e": {"$add": ["$f", 1]}}}]"#
            ),
            Some(vec![
                "a".into(),
                "c".into(),
                "_id".into(),
                "d".into(),
                "e".into(),
                "f".into()
            ])
        );
    }

    #[test]
    fn whole_document_use_means_all_fields() {
        assert_eq!(fields(r#"[{"$match": {"a": 1}}]"#), None);
        assert_eq!(fields(r#"[{"$project": {"a": 0}}]"#), None);
        assert_eq!(
            fields(r#"[{"$group": {"_id": null, "all": {"$push": "$$ROOT"}}}]"#),
            None
        );
        assert_eq!(fields(r#"[{"$redact": "$$KEEP"}, {"$count": "n"}]"#), None);
        assert_eq!(
            fields(r#"[{"$project": {"x": {"$getField": "a.b"}}}]"#),
            None
        );
        assert_eq!(fields(r#"[{"$project": {"a": {"b": 0}}}]"#), None);
        assert_eq!(
            fields(r#"[{"$project": {"r": {"$getField": "a.b"}}}]"#),
            None
        );
    }
}
