//! `$facet`: runs several sub-pipelines over the same input and emits one document
//! holding each sub-pipeline's outputs as an array.

use super::{compile_stages, Stage, StageCompileFn, StageState};
use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{CompileCtx, Env};
use crate::value::{Document, Str, Value};

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[("$facet", compile_facet)];

/// Stages that may not appear inside a `$facet` sub-pipeline.
const FORBIDDEN: &[&str] = &["$facet", "$out", "$merge"];

#[derive(Debug)]
struct SubPipeline {
    name: Str,
    stages: Vec<Box<dyn Stage>>,
    out: Vec<Document>,
}

/// The first error a document raised inside a sub-pipeline.
struct FirstError(Option<EvalError>);

impl FirstError {
    fn record(&mut self, facet: &str, stage: &str, e: EvalError) {
        if self.0.is_none() {
            self.0 = Some(EvalError::new(format!(
                "in facet '{facet}', stage {stage}: {}",
                e.message
            )));
        }
    }
}

impl SubPipeline {
    /// Pushes `doc` through `stages`, collecting the outputs of the last stage.
    fn push(
        stages: &mut [Box<dyn Stage>],
        facet: &str,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
        err: &mut FirstError,
    ) {
        let Some((stage, rest)) = stages.split_first_mut() else {
            out.push(doc);
            return;
        };
        let mut local = Vec::new();
        if let Err(e) = stage.process(doc, env, &mut local) {
            err.record(facet, stage.name(), e);
        }
        for d in local {
            Self::push(rest, facet, d, env, out, err);
        }
    }

    fn process(&mut self, doc: Document, env: &Env, err: &mut FirstError) {
        Self::push(&mut self.stages, &self.name, doc, env, &mut self.out, err);
    }

    /// Flushes blocking stages in order through the rest of the sub-pipeline.
    fn finish(&mut self, env: &Env, err: &mut FirstError) {
        for i in 0..self.stages.len() {
            let mut local = Vec::new();
            let (head, rest) = self.stages.split_at_mut(i + 1);
            let stage = &mut head[i];
            if let Err(e) = stage.finish(env, &mut local) {
                err.record(&self.name, stage.name(), e);
            }
            for d in local {
                Self::push(rest, &self.name, d, env, &mut self.out, err);
            }
        }
    }

    fn fresh(&self) -> SubPipeline {
        SubPipeline {
            name: self.name.clone(),
            stages: self.stages.iter().map(|s| s.fresh()).collect(),
            out: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Facet {
    facets: Vec<SubPipeline>,
}

impl Stage for Facet {
    fn name(&self) -> &'static str {
        "$facet"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let mut err = FirstError(None);
        if let Some((last, others)) = self.facets.split_last_mut() {
            for f in others {
                f.process(doc.clone(), env, &mut err);
            }
            last.process(doc, env, &mut err);
        }
        err.0.map_or(Ok(()), Err)
    }

    fn finish(&mut self, env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        let mut err = FirstError(None);
        let mut result = Document::with_capacity(self.facets.len());
        for f in &mut self.facets {
            f.finish(env, &mut err);
            let docs = std::mem::take(&mut f.out);
            result.push_unchecked(
                f.name.clone(),
                Value::Array(docs.into_iter().map(Value::Document).collect()),
            );
        }
        // One document is always emitted, with empty arrays when there was no input.
        out.push(result);
        err.0.map_or(Ok(()), Err)
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Facet {
            facets: self.facets.iter().map(SubPipeline::fresh).collect(),
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }

    /// `{<facet>: {stages: [<state or null>...], out: [<documents so far>]}}`; unsupported
    /// when some stage of a sub-pipeline cannot export its state.
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        let mut result = Document::with_capacity(self.facets.len());
        for f in &self.facets {
            let mut states = Vec::with_capacity(f.stages.len());
            for s in &f.stages {
                match s.checkpoint_state()? {
                    StageState::Stateless => states.push(Value::Null),
                    StageState::State(v) => states.push(v),
                    StageState::Unsupported => return Ok(StageState::Unsupported),
                }
            }
            let mut entry = Document::with_capacity(2);
            entry.push_unchecked("stages", Value::Array(states));
            entry.push_unchecked(
                "out",
                Value::Array(f.out.iter().cloned().map(Value::Document).collect()),
            );
            result.push_unchecked(f.name.clone(), Value::Document(entry));
        }
        Ok(StageState::State(Value::Document(result)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let invalid =
            |what: &str| EvalError::new(format!("$facet: invalid checkpoint state: {what}"));
        let Value::Document(d) = state else {
            return Err(invalid("expected an object"));
        };
        for f in &mut self.facets {
            let entry = d
                .get(&f.name)
                .and_then(Value::as_document)
                .ok_or_else(|| invalid(&format!("no state for sub-pipeline '{}'", f.name)))?;
            let states = entry
                .get("stages")
                .and_then(Value::as_array)
                .filter(|s| s.len() == f.stages.len())
                .ok_or_else(|| {
                    invalid(&format!(
                        "stage states of '{}' do not match the sub-pipeline",
                        f.name
                    ))
                })?;
            for (stage, st) in f.stages.iter_mut().zip(states) {
                if !matches!(st, Value::Null) {
                    stage.restore_state(st)?;
                }
            }
            let out = entry
                .get("out")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid(&format!("no outputs for '{}'", f.name)))?;
            f.out = out
                .iter()
                .map(|v| {
                    v.as_document()
                        .cloned()
                        .ok_or_else(|| invalid("outputs must be documents"))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

fn compile_facet(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let Value::Document(d) = spec else {
        return Err(CompileError::new(
            path,
            format!(
                "$facet specification must be an object of named sub-pipelines, found {}",
                spec.type_name()
            ),
        ));
    };
    if d.is_empty() {
        return Err(CompileError::new(
            path,
            "$facet requires at least one sub-pipeline",
        ));
    }
    let mut facets = Vec::with_capacity(d.len());
    for (name, pipeline) in d.iter() {
        let p = path_key(path, name);
        if name.is_empty() || name.starts_with('$') || name.contains('.') {
            return Err(CompileError::new(
                p,
                format!("$facet: sub-pipeline name '{name}' must be non-empty, not start with '$' and not contain '.'"),
            ));
        }
        let Value::Array(items) = pipeline else {
            return Err(CompileError::new(
                p,
                format!(
                    "$facet: sub-pipeline '{name}' must be an array of stages, found {}",
                    pipeline.type_name()
                ),
            ));
        };
        if items.is_empty() {
            return Err(CompileError::new(
                p,
                format!("$facet: sub-pipeline '{name}' cannot be empty"),
            ));
        }
        for (i, stage) in items.iter().enumerate() {
            if let Some(stage_name) = stage
                .as_document()
                .and_then(|s| s.keys().next())
                .filter(|k| FORBIDDEN.contains(&k.as_str()))
            {
                return Err(CompileError::new(
                    path_key(&crate::error::path_index(&p, i), stage_name),
                    format!("$facet: {stage_name} is not allowed inside a $facet sub-pipeline"),
                ));
            }
        }
        facets.push(SubPipeline {
            name: name.clone(),
            stages: compile_stages(pipeline, &p, cx)?,
            out: Vec::new(),
        });
    }
    Ok(Box::new(Facet { facets }))
}

#[cfg(test)]
mod tests {
    use crate::value::{parse_document, parse_value};
    use crate::Pipeline;

    #[test]
    fn checkpoint_round_trip_through_facet_sort_count_limit() {
        let p = Pipeline::compile(
            &parse_value(
                r#"[{"$facet": {"s": [{"$sort": {"v": -1}}], "n": [{"$count": "c"}], "l": [{"$limit": 1}]}}]"#,
            )
            .expect("json"),
        )
        .expect("compiles");
        let doc = |v: i32| parse_document(&format!(r#"{{"v": {v}}}"#)).expect("doc");
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        let mut run = p.start();
        run.push(doc(1), &mut out, &mut errors);
        run.push(doc(3), &mut out, &mut errors);
        let state = run.checkpoint_state().expect("state").expect("supported");

        let mut resumed = p.start();
        resumed.restore_state(&state).expect("restores");
        resumed.push(doc(2), &mut out, &mut errors);
        resumed.finish(&mut out, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].to_json(),
            r#"{"s":[{"v":3},{"v":2},{"v":1}],"n":[{"c":3}],"l":[{"v":1}]}"#
        );
    }
}
