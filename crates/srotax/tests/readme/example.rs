use stream_core::value::parse_document;
use stream_core::Pipeline;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Compile once: a JSON array of MongoDB aggregation stages.
    let rule = Pipeline::compile_json(
        r#"[
            {"$match": {"status": "PAID", "orderValue": {"$gte": 1000}}},
            {"$set": {"tier": {"$cond": [{"$gte": ["$orderValue", 5000]}, "gold", "silver"]}}}
        ]"#,
    )?;

    // Evaluate one document: the documents that leave the last stage.
    let out = rule.eval_json(r#"{"orderId": "ord-1", "status": "PAID", "orderValue": 1250.5}"#)?;
    assert_eq!(
        out[0].to_json(),
        r#"{"orderId":"ord-1","status":"PAID","orderValue":1250.5,"tier":"silver"}"#
    );

    // Or a finite batch: a failing document is reported and does not stop the others.
    let docs = [
        parse_document(r#"{"orderId": "ord-2", "status": "PAID", "orderValue": 7200}"#)?,
        parse_document(r#"{"orderId": "ord-3", "status": "NEW", "orderValue": 9000}"#)?,
    ];
    let result = rule.run(docs);
    assert!(result.errors.is_empty());
    assert_eq!(result.documents.len(), 1);
    let tier = result.documents[0].get("tier");
    assert_eq!(tier.and_then(|t| t.as_str()), Some("gold"));
    Ok(())
}
