//! Operator state per source partition, so that state moves with partitions between
//! processes (what Kafka Streams calls tasks).
//!
//! When a source's partitions can move to another process running the same pipeline
//! ([`super::Source::partitions_move`]: a Kafka consumer group) and the pipeline keeps
//! state (`$group`), the processing thread keeps one [`PipelineRun`] per partition:
//! records of partition P only ever touch P's `$group` table. Keys never span
//! partitions when the producer keys records by the grouping key, so the union of the
//! partitions' results is the result of the whole input.
//!
//! A checkpoint saves each partition's *slice* — its position and its operator state,
//! together — as one keyed entry of the state store, `<pipelineId>/partition/<name>`
//! (`name` as in the source's positions, e.g. `orders.v1:3`). On rebalance the old
//! owner saves the revoked partitions' slices and commits their positions before it
//! releases them; the new owner loads a slice and resumes reading at its position
//! before it reads any record of that partition. Replayed records (read after the
//! slice was saved) are applied on top of exactly that state, so aggregates stay exact.
//! With a shared store (`redis`, `postgres`) the slices are visible to every process.

use super::connector::SourcePositions;
use super::state::{StateError, StateStore};
use crate::error::StageError;
use crate::pipeline::{Pipeline, PipelineRun, StageStats};
use crate::value::{parse_document, ExtJsonMode, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Slices to save: `(state-store key, slice)`.
pub(crate) type Slices = Vec<(String, PartitionSlice)>;

/// `(state-store key, encoded slice)` pairs for [`StateStore::put_batch`], encoded here.
pub(crate) fn encoded(slices: &Slices) -> Vec<(String, Vec<u8>)> {
    slices
        .iter()
        .map(|(key, slice)| (key.clone(), slice.encode()))
        .collect()
}

/// Slices being encoded: `(state-store key, task giving the slice and its encoding)`.
pub(crate) type EncodingSlices = Vec<(String, JoinHandle<(PartitionSlice, Vec<u8>)>)>;

/// Starts encoding each slice on the blocking pool (in parallel): the processing thread,
/// which every record waits for, only snapshots the state, and the sink task, which
/// awaits the encodings before saving, keeps delivering output meanwhile. At the end
/// of an `availableNow` run the whole state is encoded while the results are delivered.
/// Must be called within a tokio runtime.
pub(crate) fn encode_slices(slices: Slices) -> EncodingSlices {
    slices
        .into_iter()
        .map(|(key, slice)| {
            let encoding = tokio::task::spawn_blocking(move || {
                let bytes = slice.encode();
                (slice, bytes)
            });
            (key, encoding)
        })
        .collect()
}

/// The state-store key of a partition's slice.
pub fn slice_key(pipeline_id: &str, partition: &str) -> String {
    format!("{}{partition}", slice_prefix(pipeline_id))
}

/// The common prefix of a pipeline's slice keys.
pub fn slice_prefix(pipeline_id: &str) -> String {
    format!("{pipeline_id}/partition/")
}

/// One partition's saved state: where to resume reading and the operator state of
/// everything before that position.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSlice {
    /// The source position to resume after.
    pub position: Value,
    /// Operator state, one entry per stage (as [`PipelineRun::checkpoint_state`]).
    pub operator_state: Vec<Value>,
}

impl PartitionSlice {
    /// Canonical Extended JSON: `{"position": ..., "operatorState": [...], "savedAt": date}`.
    pub fn encode(&self) -> Vec<u8> {
        let mode = ExtJsonMode::Canonical;
        let mut out = String::from("{\"position\":");
        self.position.write_json(&mut out, mode);
        super::state::write_operator_state(&mut out, &self.operator_state);
        out.push_str(",\"savedAt\":");
        Value::Date(chrono::Utc::now().timestamp_millis()).write_json(&mut out, mode);
        out.push('}');
        out.into_bytes()
    }

    /// Reads [`PartitionSlice::encode`]'s output; `key` names it in errors.
    pub fn decode(bytes: &[u8], key: &str) -> Result<PartitionSlice, StateError> {
        let corrupt = |m: String| StateError::Corrupt(format!("partition state '{key}': {m}"));
        let text = std::str::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
        let d = parse_document(text).map_err(|e| corrupt(e.to_string()))?;
        let position = d
            .get("position")
            .cloned()
            .ok_or_else(|| corrupt("missing position".into()))?;
        let operator_state = d
            .get("operatorState")
            .and_then(Value::as_array)
            .ok_or_else(|| corrupt("missing operatorState".into()))?
            .to_vec();
        Ok(PartitionSlice {
            position,
            operator_state,
        })
    }
}

/// Loads the slices of `partitions` (those never saved are absent): one scan of the
/// pipeline's slices.
pub async fn load_slices(
    store: &dyn StateStore,
    pipeline_id: &str,
    partitions: &[String],
) -> Result<HashMap<String, PartitionSlice>, StateError> {
    let prefix = slice_prefix(pipeline_id);
    let mut out = HashMap::new();
    for (key, bytes) in store.scan(&prefix).await? {
        let name = &key[prefix.len()..];
        if partitions.iter().any(|p| p == name) {
            out.insert(name.to_string(), PartitionSlice::decode(&bytes, &key)?);
        }
    }
    Ok(out)
}

/// Deletes every slice of a pipeline (`srotax run --reset`).
pub async fn clear_slices(store: &dyn StateStore, pipeline_id: &str) -> Result<(), StateError> {
    for (key, _) in store.scan(&slice_prefix(pipeline_id)).await? {
        store.delete(&key).await?;
    }
    Ok(())
}

/// What the processing thread pushes records through: one run, or one per partition.
pub(crate) enum Runs {
    /// Every record goes through the same run (the usual case).
    Single(PipelineRun),
    /// One run per source partition (see the module documentation).
    PerPartition(PartitionRuns),
}

/// The runs of the partitions this process owns.
pub(crate) struct PartitionRuns {
    pipeline: Pipeline,
    template: PipelineRun,
    tasks: HashMap<Arc<str>, Task, foldhash::fast::RandomState>,
    /// Counters of runs whose partition was revoked, so stage metrics do not go back.
    retired: Vec<StageStats>,
}

struct Task {
    run: PipelineRun,
    /// Records were processed since the slice was last saved.
    dirty: bool,
}

impl Runs {
    /// One run per partition when `per_partition`, else `run` for everything.
    pub(crate) fn new(pipeline: &Pipeline, run: PipelineRun, per_partition: bool) -> Runs {
        if !per_partition {
            return Runs::Single(run);
        }
        Runs::PerPartition(PartitionRuns {
            retired: vec![StageStats::default(); pipeline.stage_names().len()],
            pipeline: pipeline.clone(),
            template: run,
            tasks: HashMap::default(),
        })
    }

    /// The run for a record of `partition` (a fresh one for a partition seen first).
    pub(crate) fn get(&mut self, partition: &Arc<str>) -> &mut PipelineRun {
        match self {
            Runs::Single(run) => run,
            Runs::PerPartition(p) => {
                let task = p.tasks.entry(partition.clone()).or_insert_with(|| Task {
                    run: p.pipeline.start_with_env(p.template.env().clone()),
                    dirty: false,
                });
                task.dirty = true;
                &mut task.run
            }
        }
    }

    /// Every run.
    pub(crate) fn all(&mut self) -> Vec<&mut PipelineRun> {
        match self {
            Runs::Single(run) => vec![run],
            Runs::PerPartition(p) => p.tasks.values_mut().map(|t| &mut t.run).collect(),
        }
    }

    /// The run holding no records' state (for questions about the pipeline itself).
    pub(crate) fn any(&self) -> &PipelineRun {
        match self {
            Runs::Single(run) => run,
            Runs::PerPartition(p) => &p.template,
        }
    }

    /// Per-stage counters summed over the runs.
    pub(crate) fn stage_stats(&self) -> Vec<(&'static str, StageStats)> {
        let Runs::PerPartition(p) = self else {
            return self.any().stage_stats();
        };
        let mut total = p.template.stage_stats();
        for ((_, t), r) in total.iter_mut().zip(&p.retired) {
            add(t, r);
        }
        for task in p.tasks.values() {
            for ((_, t), (_, s)) in total.iter_mut().zip(task.run.stage_stats()) {
                add(t, &s);
            }
        }
        total
    }

    /// Installs an assigned partition's run, restored from its slice, and records the
    /// slice's position as the partition's position.
    pub(crate) fn assign(
        &mut self,
        partition: &str,
        slice: Option<&PartitionSlice>,
        positions: &mut SourcePositions,
    ) -> Result<(), StageError> {
        let Runs::PerPartition(p) = self else {
            return Ok(());
        };
        let mut run = p.pipeline.start_with_env(p.template.env().clone());
        if let Some(slice) = slice {
            run.restore_state(&slice.operator_state)?;
            positions.insert(partition.to_string(), slice.position.clone());
        }
        p.tasks
            .insert(Arc::from(partition), Task { run, dirty: false });
        Ok(())
    }

    /// Drops revoked partitions' runs and positions (their slices were just saved).
    pub(crate) fn revoke(&mut self, partitions: &[String], positions: &mut SourcePositions) {
        let Runs::PerPartition(p) = self else {
            return;
        };
        for name in partitions {
            if let Some(task) = p.tasks.remove(name.as_str()) {
                for (r, (_, s)) in p.retired.iter_mut().zip(task.run.stage_stats()) {
                    add(r, &s);
                }
            }
            positions.remove(name);
        }
    }

    /// The slices to save for a checkpoint: `(key, encoded slice)` of every partition
    /// with records processed since its last save (all when `all`). `None` when some
    /// stage cannot export its state.
    pub(crate) fn slices(
        &mut self,
        pipeline_id: &str,
        positions: &SourcePositions,
        all: bool,
    ) -> Result<Option<Slices>, StageError> {
        let Runs::PerPartition(p) = self else {
            return Ok(Some(Vec::new()));
        };
        let mut out = Vec::new();
        for (name, task) in p.tasks.iter_mut() {
            // A partition without a position has processed nothing: nothing to save.
            let Some(position) = positions.get(&**name) else {
                continue;
            };
            if !(task.dirty || all) {
                continue;
            }
            let Some(operator_state) = task.run.checkpoint_state()? else {
                return Ok(None);
            };
            let slice = PartitionSlice {
                position: position.clone(),
                operator_state,
            };
            out.push((slice_key(pipeline_id, name), slice));
        }
        for task in p.tasks.values_mut() {
            task.dirty = false;
        }
        Ok(Some(out))
    }
}

fn add(total: &mut StageStats, s: &StageStats) {
    total.documents_in += s.documents_in;
    total.documents_out += s.documents_out;
    total.errors += s.errors;
    total.nanos += s.nanos;
    total.late_events += s.late_events;
    total.state_entries += s.state_entries;
}

/// True when the pipeline keeps state between records (some stage exports non-null
/// checkpoint state), so partitions moving between processes must take state along.
pub(crate) fn is_stateful(run: &PipelineRun) -> bool {
    matches!(run.checkpoint_state(), Ok(Some(states)) if states.iter().any(|s| !matches!(s, Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::state::MemoryStateStore;

    fn group() -> Pipeline {
        Pipeline::compile_json(
            r#"[{"$group": {"_id": "$k", "n": {"$count": {}}, "sum": {"$sum": "$v"}}}]"#,
        )
        .unwrap()
    }

    fn push(runs: &mut Runs, partition: &Arc<str>, json: &str) {
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        runs.get(partition)
            .push(parse_document(json).unwrap(), &mut out, &mut errors);
        assert!(errors.is_empty());
    }

    fn totals(runs: &mut Runs) -> Vec<String> {
        let mut rows = Vec::new();
        for run in runs.all() {
            let mut errors = Vec::new();
            run.trigger(true, &mut rows, &mut errors);
        }
        let mut rows: Vec<String> = rows.iter().map(|d| d.to_json()).collect();
        rows.sort();
        rows
    }

    #[tokio::test]
    async fn a_partition_moves_with_its_state_and_position() {
        let pipeline = group();
        assert!(is_stateful(&pipeline.start()));
        assert!(!is_stateful(
            &Pipeline::compile_json(r#"[{"$match": {"a": 1}}]"#)
                .unwrap()
                .start()
        ));
        let (p0, p1): (Arc<str>, Arc<str>) = ("t:0".into(), "t:1".into());
        let mut old = Runs::new(&pipeline, pipeline.start(), true);
        let mut positions = SourcePositions::new();
        push(&mut old, &p0, r#"{"k": "a", "v": 1}"#);
        push(&mut old, &p1, r#"{"k": "b", "v": 10}"#);
        push(&mut old, &p1, r#"{"k": "b", "v": 5}"#);
        positions.insert("t:0".into(), Value::Int64(1));
        positions.insert("t:1".into(), Value::Int64(2));
        let store = MemoryStateStore::new();
        let slices = old.slices("p", &positions, false).unwrap().unwrap();
        assert_eq!(slices.len(), 2);
        store.put_batch(encoded(&slices), None).await.unwrap();
        // Nothing processed since: nothing to save, unless asked for all.
        assert!(old
            .slices("p", &positions, false)
            .unwrap()
            .unwrap()
            .is_empty());
        assert_eq!(old.slices("p", &positions, true).unwrap().unwrap().len(), 2);
        old.revoke(&["t:1".to_string()], &mut positions);
        assert_eq!(totals(&mut old), [r#"{"_id":"a","n":1,"sum":1}"#]);
        assert!(!positions.contains_key("t:1"));

        // The new owner loads t:1 and continues where the old one stopped.
        let loaded = load_slices(&store, "p", &["t:1".to_string(), "t:9".to_string()])
            .await
            .unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["t:1"].position, Value::Int64(2));
        let mut new = Runs::new(&pipeline, pipeline.start(), true);
        let mut new_positions = SourcePositions::new();
        new.assign("t:1", loaded.get("t:1"), &mut new_positions)
            .unwrap();
        assert_eq!(new_positions.get("t:1"), Some(&Value::Int64(2)));
        push(&mut new, &p1, r#"{"k": "b", "v": 100}"#);
        assert_eq!(totals(&mut new), [r#"{"_id":"b","n":3,"sum":115}"#]);

        clear_slices(&store, "p").await.unwrap();
        assert!(store.scan("p/").await.unwrap().is_empty());
    }

    #[test]
    fn damaged_slices_are_named() {
        let e = PartitionSlice::decode(b"{\"position\": 1}", "p/partition/t:0").unwrap_err();
        assert!(e.to_string().contains("p/partition/t:0"), "{e}");
    }
}
