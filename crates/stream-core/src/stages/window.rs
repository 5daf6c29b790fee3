//! Event-time window stages, following MongoDB Atlas Stream Processing:
//! `$tumblingWindow`, `$hoppingWindow` and `$sessionWindow`.
//!
//! Each document is assigned to one window (tumbling), to `size / hopSize` windows
//! (hopping) or to the session of its `partitionBy` key (session), by its event time:
//! the runtime's ([`Env::event_time`], from the source's `timeField`), the window's own
//! `timeField` (a SrotaX extension, used in batch mode) or, with
//! `boundary: "processingTime"`, the wall clock. Every window runs its own copy of the
//! inner `pipeline`; when the watermark ([`Stage::on_watermark`]) passes the window's
//! end, the inner pipeline's results are emitted, each with
//! `_stream_meta: {window: {start, end}}`. The end of the input
//! ([`Stage::finish`]) flushes every open window, so a finite batch gives every window.
//!
//! Late data (the window of an event already closed):
//! - within `allowedLateness` of the window's end, the window is still kept: the event
//!   is added and the window's updated result is emitted again at once;
//! - after that the event is dropped and counted ([`Stage::late_events`]), or with
//!   `lateData: "sideOutput"` handed to the runtime ([`Stage::take_late`]) for the
//!   dead-letter sink with reason `late`.
//!
//! Tumbling and hopping windows feed their inner pipeline document by document, so a
//! `$group` inside keeps only its groups; session windows keep their documents (sessions
//! merge, and two inner pipelines' states cannot be merged) and run the inner pipeline
//! over them, in event-time order, when the session closes.

use super::group::invalid_state;
use super::{compile_stages, Stage, StageCompileFn, StageState};
use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env, Expr};
use crate::pipeline::{Pipeline, PipelineRun};
use crate::value::{Document, HashableValue, Value, ValueHashMap};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[
    ("$tumblingWindow", compile_tumbling),
    ("$hoppingWindow", compile_hopping),
    ("$sessionWindow", compile_session),
];

/// Stage names of this family (window stages may not nest).
const WINDOW_STAGES: &[&str] = &["$tumblingWindow", "$hoppingWindow", "$sessionWindow"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumbling,
    Hopping { hop: i64 },
    Session { gap: i64 },
}

/// What happens to an event whose windows are closed beyond `allowedLateness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LateData {
    Drop,
    SideOutput,
}

#[derive(Debug)]
struct WindowConfig {
    name: &'static str,
    kind: Kind,
    /// Window length in ms (tumbling, hopping).
    size: i64,
    offset: i64,
    allowed_lateness: i64,
    idle_timeout: Option<i64>,
    processing_time: bool,
    partition_by: Option<Expr>,
    time_field: Option<Expr>,
    late_data: LateData,
    /// The inner pipeline's prototype. Stages are `Send` but not `Sync`; the lock only
    /// makes the shared configuration shareable and is taken to start a window's run.
    inner: Mutex<Pipeline>,
}

impl WindowConfig {
    fn start_inner(&self, env: &Env) -> PipelineRun {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .start_with_env(env.clone())
    }
}

/// One open window of one partition key.
#[derive(Debug)]
struct Pane {
    key: Value,
    content: Content,
    /// Emitted once already (the window is kept only for late updates).
    fired: bool,
}

#[derive(Debug)]
enum Content {
    /// The inner pipeline, fed as documents arrive (tumbling, hopping), and what its
    /// streaming stages (`$project`, `$match`) already emitted, held until the end.
    Run(PipelineRun, Vec<Document>),
    /// The documents with their event times (sessions).
    Docs(Vec<(i64, Document)>),
}

/// The panes of one window range, in first-seen key order.
#[derive(Debug, Default)]
struct Panes {
    index: ValueHashMap<usize>,
    panes: Vec<Pane>,
}

/// A session of one key: `[start, end)` with `end` = last event + gap.
#[derive(Debug)]
struct Session {
    start: i64,
    end: i64,
    pane: Pane,
}

/// A window stage with its open windows.
#[derive(Debug)]
pub(crate) struct WindowStage {
    config: Arc<WindowConfig>,
    /// Tumbling and hopping windows by start.
    ranges: BTreeMap<i64, Panes>,
    /// Sessions by key, in first-seen key order.
    sessions: Vec<(Value, Vec<Session>)>,
    session_index: ValueHashMap<usize>,
    watermark: i64,
    /// Wall-clock time of the last input, for `idleTimeout`.
    last_input: Option<i64>,
    late_events: u64,
    late: Vec<Document>,
}

fn wall_clock() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The event time a value stands for: a date, or a number of epoch milliseconds.
pub(crate) fn time_millis(v: &Value) -> Option<i64> {
    match v {
        Value::Date(ms) => Some(*ms),
        Value::Int32(n) => Some(i64::from(*n)),
        Value::Int64(n) => Some(*n),
        Value::Double(f) if f.is_finite() => Some(*f as i64),
        _ => None,
    }
}

impl WindowStage {
    fn new(config: Arc<WindowConfig>) -> Self {
        WindowStage {
            config,
            ranges: BTreeMap::new(),
            sessions: Vec::new(),
            session_index: ValueHashMap::default(),
            watermark: i64::MIN,
            last_input: None,
            late_events: 0,
            late: Vec::new(),
        }
    }

    fn event_time(&self, doc: &Document, env: &Env) -> Result<i64, EvalError> {
        let name = self.config.name;
        if self.config.processing_time {
            return Ok(wall_clock());
        }
        if let Some(expr) = &self.config.time_field {
            let v = expr.eval(&Ctx::new(doc, env))?;
            return time_millis(&v).ok_or_else(|| {
                EvalError::new(format!(
                    "{name}: timeField must evaluate to a date or epoch milliseconds, found {}",
                    v.type_name()
                ))
            });
        }
        env.event_time.ok_or_else(|| {
            EvalError::new(format!(
                "{name}: the document has no event time; set timeField on the source (streaming) or in the window (batch)"
            ))
        })
    }

    /// The first and last window starts containing `t`, and the step between starts.
    fn starts(&self, t: i64) -> (i64, i64, i64) {
        let (size, offset) = (self.config.size, self.config.offset);
        let step = match self.config.kind {
            Kind::Hopping { hop } => hop,
            _ => size,
        };
        let last = (t - offset).div_euclid(step) * step + offset;
        let first = last - (size - 1 - (t - last)).div_euclid(step) * step;
        (first, last, step)
    }

    /// Adds a document to its tumbling or hopping windows; false when every one of
    /// them is closed beyond `allowedLateness` (the event is late).
    fn add_to_ranges(
        &mut self,
        doc: Document,
        t: i64,
        key: Value,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<bool, EvalError> {
        let (size, lateness) = (self.config.size, self.config.allowed_lateness);
        let (mut first, last, step) = self.starts(t);
        // Windows closed beyond their allowed lateness take nothing more.
        while first <= last && first + size + lateness <= self.watermark {
            first += step;
        }
        if first > last {
            return Ok(false);
        }
        let mut first_error = None;
        let mut doc = Some(doc);
        let mut start = first;
        while start <= last {
            let d = if start == last {
                doc.take().unwrap_or_default()
            } else {
                doc.clone().unwrap_or_default()
            };
            let panes = self.ranges.entry(start).or_default();
            // Without partitionBy a window has one pane: no hashing needed.
            let single = panes.panes.len() == 1 && panes.panes[0].key.identical(&key);
            let found = if single {
                Some(0)
            } else {
                panes.index.get(&HashableValue(key.clone())).copied()
            };
            let i = match found {
                Some(i) => i,
                None => {
                    let content = Content::Run(self.config.start_inner(env), Vec::new());
                    panes
                        .index
                        .insert(HashableValue(key.clone()), panes.panes.len());
                    panes.panes.push(Pane {
                        key: key.clone(),
                        content,
                        fired: false,
                    });
                    panes.panes.len() - 1
                }
            };
            let pane = &mut panes.panes[i];
            if let Err(e) = pane.add(d, t) {
                first_error.get_or_insert(e);
            }
            if pane.fired {
                // A late update within allowedLateness: emit the updated result now.
                emit_pane(&self.config, pane, start, start + size, true, env, out)?;
            }
            start += step;
        }
        first_error.map_or(Ok(true), Err)
    }

    fn add_to_session(
        &mut self,
        doc: Document,
        t: i64,
        key: Value,
        gap: i64,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<bool, EvalError> {
        let (mut start, mut end) = (t, t + gap);
        let i = match self.session_index.get(&HashableValue(key.clone())) {
            Some(&i) => i,
            None => {
                self.session_index
                    .insert(HashableValue(key.clone()), self.sessions.len());
                self.sessions.push((key.clone(), Vec::new()));
                self.sessions.len() - 1
            }
        };
        let sessions = &mut self.sessions[i].1;
        // Sessions that touch or overlap [t, t + gap) merge with it.
        let (merging, kept): (Vec<Session>, Vec<Session>) = std::mem::take(sessions)
            .into_iter()
            .partition(|s| s.start <= end && s.end >= start);
        *sessions = kept;
        for s in &merging {
            start = start.min(s.start);
            end = end.max(s.end);
        }
        if end + self.config.allowed_lateness <= self.watermark {
            *sessions = std::mem::take(sessions)
                .into_iter()
                .chain(merging)
                .collect();
            sessions.sort_by_key(|s| s.start);
            return Ok(false);
        }
        let mut docs = Vec::new();
        let mut fired = false;
        for s in merging {
            fired |= s.pane.fired;
            if let Content::Docs(d) = s.pane.content {
                docs.extend(d);
            }
        }
        docs.push((t, doc));
        let mut session = Session {
            start,
            end,
            pane: Pane {
                key,
                content: Content::Docs(docs),
                fired,
            },
        };
        if session.pane.fired {
            emit_pane(&self.config, &mut session.pane, start, end, true, env, out)?;
        }
        sessions.push(session);
        sessions.sort_by_key(|s| s.start);
        Ok(true)
    }

    /// Emits the windows whose end the watermark passed and drops those past their
    /// allowed lateness.
    fn advance(
        &mut self,
        watermark: i64,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        let config = Arc::clone(&self.config);
        let (size, lateness) = (config.size, config.allowed_lateness);
        let mut first_error = None;
        let mut record = |r: Result<(), EvalError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        // Ranges are ordered by start, so by end too.
        let due: Vec<i64> = self
            .ranges
            .range(..=watermark.saturating_sub(size))
            .map(|(s, _)| *s)
            .collect();
        for start in due {
            let end = start + size;
            let purge = end + lateness <= watermark;
            if let Some(panes) = self.ranges.get_mut(&start) {
                for pane in panes.panes.iter_mut().filter(|p| !p.fired) {
                    record(emit_pane(&config, pane, start, end, !purge, env, out));
                }
            }
            if purge {
                self.ranges.remove(&start);
            }
        }
        // Sessions closing at once are emitted in order of end, start, key.
        let mut due: Vec<(usize, Session)> = Vec::new();
        for (k, (_, sessions)) in self.sessions.iter_mut().enumerate() {
            let (closed, open): (Vec<Session>, Vec<Session>) = std::mem::take(sessions)
                .into_iter()
                .partition(|s| s.end <= watermark);
            *sessions = open;
            due.extend(closed.into_iter().map(|s| (k, s)));
        }
        due.sort_by_key(|(k, s)| (s.end, s.start, *k));
        for (k, mut s) in due {
            let keep = s.end + lateness > watermark;
            if !s.pane.fired {
                record(emit_pane(
                    &config,
                    &mut s.pane,
                    s.start,
                    s.end,
                    keep,
                    env,
                    out,
                ));
            }
            if keep {
                self.sessions[k].1.push(s);
                self.sessions[k].1.sort_by_key(|s| s.start);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Pane {
    fn add(&mut self, doc: Document, t: i64) -> Result<(), EvalError> {
        match &mut self.content {
            Content::Run(run, held) => {
                let mut errors = Vec::new();
                run.push(doc, held, &mut errors);
                match errors.into_iter().next() {
                    Some(e) => Err(EvalError {
                        message: format!("inner pipeline: {e}"),
                        transient: e.error.transient,
                    }),
                    None => Ok(()),
                }
            }
            Content::Docs(docs) => {
                docs.push((t, doc));
                Ok(())
            }
        }
    }
}

/// Emits a window's results. With `keep`, the window's state survives (for late
/// updates within allowedLateness); otherwise it is consumed.
fn emit_pane(
    config: &WindowConfig,
    pane: &mut Pane,
    start: i64,
    end: i64,
    keep: bool,
    env: &Env,
    out: &mut Vec<Document>,
) -> Result<(), EvalError> {
    pane.fired = true;
    let (mut results, mut errors) = (Vec::new(), Vec::new());
    match &mut pane.content {
        Content::Run(run, held) => {
            let state = if keep {
                run.checkpoint_state()
                    .map_err(|e| EvalError::new(e.to_string()))?
            } else {
                None
            };
            match state {
                // Finish a copy: the window stays open for late updates.
                Some(state) => {
                    let mut copy = config.start_inner(env);
                    copy.restore_state(&state)
                        .map_err(|e| EvalError::new(e.to_string()))?;
                    results.extend(held.iter().cloned());
                    copy.finish(&mut results, &mut errors);
                }
                // Without `keep`, or with inner state that cannot be copied (then there
                // are no late updates).
                None => {
                    results.append(held);
                    run.finish(&mut results, &mut errors);
                }
            }
        }
        Content::Docs(docs) => {
            let mut sorted: Vec<&(i64, Document)> = docs.iter().collect();
            sorted.sort_by_key(|(t, _)| *t);
            let mut run = config.start_inner(env);
            for (_, d) in sorted {
                run.push(d.clone(), &mut results, &mut errors);
            }
            run.finish(&mut results, &mut errors);
        }
    }
    for mut doc in results {
        add_window_meta(&mut doc, start, end);
        out.push(doc);
    }
    match errors.into_iter().next() {
        Some(e) => Err(EvalError::new(format!(
            "{} window [{start}, {end}): inner pipeline: {e}",
            config.name
        ))),
        None => Ok(()),
    }
}

/// Sets `_stream_meta.window: {start, end}` on a result.
fn add_window_meta(doc: &mut Document, start: i64, end: i64) {
    let mut window = Document::with_capacity(2);
    window.push_unchecked("start", Value::Date(start));
    window.push_unchecked("end", Value::Date(end));
    match doc.get_mut("_stream_meta") {
        Some(Value::Document(meta)) => meta.insert("window", Value::Document(window)),
        _ => {
            let mut meta = Document::with_capacity(1);
            meta.push_unchecked("window", Value::Document(window));
            doc.insert("_stream_meta", Value::Document(meta));
        }
    }
}

impl Stage for WindowStage {
    fn name(&self) -> &'static str {
        self.config.name
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let t = self.event_time(&doc, env)?;
        if self.config.idle_timeout.is_some() {
            self.last_input = Some(wall_clock());
        }
        let key = match &self.config.partition_by {
            Some(e) => {
                let v = e.eval(&Ctx::new(&doc, env))?;
                if v.is_missing() {
                    Value::Null
                } else {
                    v.into_owned()
                }
            }
            None => Value::Null,
        };
        let side = self.config.late_data == LateData::SideOutput;
        let original = side.then(|| doc.clone());
        let accepted = match self.config.kind {
            Kind::Session { gap } => self.add_to_session(doc, t, key, gap, env, out)?,
            _ => self.add_to_ranges(doc, t, key, env, out)?,
        };
        if !accepted {
            self.late_events += 1;
            if let Some(d) = original {
                self.late.push(d);
            }
        }
        Ok(())
    }

    fn finish(&mut self, env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        // Every open window closes; windows already emitted were final up to now.
        let config = Arc::clone(&self.config);
        let mut first_error = None;
        for (start, panes) in std::mem::take(&mut self.ranges) {
            for mut pane in panes.panes.into_iter().filter(|p| !p.fired) {
                let end = start + config.size;
                if let Err(e) = emit_pane(&config, &mut pane, start, end, false, env, out) {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut all: Vec<(i64, i64, usize, Session)> = Vec::new();
        for (k, (_, sessions)) in std::mem::take(&mut self.sessions).into_iter().enumerate() {
            all.extend(sessions.into_iter().map(|s| (s.end, s.start, k, s)));
        }
        self.session_index.clear();
        all.sort_by_key(|(end, start, k, _)| (*end, *start, *k));
        for (end, start, _, mut s) in all.into_iter().filter(|s| !s.3.pane.fired) {
            if let Err(e) = emit_pane(&config, &mut s.pane, start, end, false, env, out) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(WindowStage::new(Arc::clone(&self.config)))
    }

    fn uses_event_time(&self) -> bool {
        !self.config.processing_time
    }

    fn on_watermark(
        &mut self,
        watermark: i64,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if self.config.processing_time {
            return Ok(());
        }
        self.advance(watermark, env, out)
    }

    fn on_processing_time(
        &mut self,
        now: i64,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if self.config.processing_time {
            return self.advance(now, env, out);
        }
        match (self.config.idle_timeout, self.last_input) {
            (Some(idle), Some(last)) if now - last >= idle => {
                // No input for idleTimeout: close every open window.
                self.last_input = None;
                let max_end = self
                    .ranges
                    .keys()
                    .next_back()
                    .map(|s| s + self.config.size)
                    .into_iter()
                    .chain(
                        self.sessions
                            .iter()
                            .flat_map(|(_, s)| s.iter().map(|s| s.end)),
                    )
                    .max();
                match max_end {
                    Some(end) => self.advance(end, env, out),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn late_events(&self) -> u64 {
        self.late_events
    }

    fn state_entries(&self) -> u64 {
        let panes: usize = self.ranges.values().map(|p| p.panes.len()).sum();
        let sessions: usize = self.sessions.iter().map(|(_, s)| s.len()).sum();
        (panes + sessions) as u64
    }

    fn take_late(&mut self, out: &mut Vec<Document>) {
        out.append(&mut self.late);
    }

    /// `{watermark, lateEvents, windows: [[start, end, key, fired, content]...]}` where
    /// content is the inner pipeline's stage states (tumbling, hopping) or
    /// `[[time, document]...]` (sessions).
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        let mut windows = Vec::new();
        let mut save = |start: i64, end: i64, pane: &Pane| -> Result<bool, EvalError> {
            let content = match &pane.content {
                Content::Run(run, held) => {
                    let Some(states) = run
                        .checkpoint_state()
                        .map_err(|e| EvalError::new(e.to_string()))?
                    else {
                        return Ok(false);
                    };
                    let held = held.iter().cloned().map(Value::Document).collect();
                    Value::Array(vec![Value::Array(states), Value::Array(held)])
                }
                Content::Docs(docs) => Value::Array(
                    docs.iter()
                        .map(|(t, d)| {
                            Value::Array(vec![Value::Int64(*t), Value::Document(d.clone())])
                        })
                        .collect(),
                ),
            };
            windows.push(Value::Array(vec![
                Value::Int64(start),
                Value::Int64(end),
                pane.key.clone(),
                Value::Bool(pane.fired),
                content,
            ]));
            Ok(true)
        };
        for (start, panes) in &self.ranges {
            for pane in &panes.panes {
                if !save(*start, start + self.config.size, pane)? {
                    return Ok(StageState::Unsupported);
                }
            }
        }
        for (_, sessions) in &self.sessions {
            for s in sessions {
                save(s.start, s.end, &s.pane)?;
            }
        }
        let mut d = Document::with_capacity(3);
        d.push_unchecked("watermark", Value::Int64(self.watermark));
        d.push_unchecked("lateEvents", Value::Int64(self.late_events as i64));
        d.push_unchecked("windows", Value::Array(windows));
        Ok(StageState::State(Value::Document(d)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let name = self.config.name;
        let bad = || invalid_state(name, state);
        let d = state.as_document().ok_or_else(bad)?;
        let mut restored = WindowStage::new(Arc::clone(&self.config));
        restored.watermark = d.get("watermark").and_then(time_millis).ok_or_else(bad)?;
        restored.late_events = d
            .get("lateEvents")
            .and_then(time_millis)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(bad)?;
        let env = Env::now();
        for w in d.get("windows").and_then(Value::as_array).ok_or_else(bad)? {
            let Some([start, end, key, Value::Bool(fired), content]) = w.as_array() else {
                return Err(invalid_state(name, w));
            };
            let (start, end) = (
                time_millis(start).ok_or_else(|| invalid_state(name, w))?,
                time_millis(end).ok_or_else(|| invalid_state(name, w))?,
            );
            let content = match self.config.kind {
                Kind::Session { .. } => {
                    let mut docs = Vec::new();
                    for item in content.as_array().ok_or_else(|| invalid_state(name, w))? {
                        let Some([Value::Int64(t), Value::Document(doc)]) = item.as_array() else {
                            return Err(invalid_state(name, item));
                        };
                        docs.push((*t, doc.clone()));
                    }
                    Content::Docs(docs)
                }
                _ => {
                    let Some([Value::Array(states), Value::Array(held)]) = content.as_array()
                    else {
                        return Err(invalid_state(name, w));
                    };
                    let mut run = self.config.start_inner(&env);
                    run.restore_state(states)
                        .map_err(|e| EvalError::new(format!("{name}: {e}")))?;
                    let held: Option<Vec<Document>> =
                        held.iter().map(|v| v.as_document().cloned()).collect();
                    Content::Run(run, held.ok_or_else(|| invalid_state(name, w))?)
                }
            };
            let pane = Pane {
                key: key.clone(),
                content,
                fired: *fired,
            };
            match self.config.kind {
                Kind::Session { .. } => {
                    let h = HashableValue(key.clone());
                    let i = match restored.session_index.get(&h) {
                        Some(&i) => i,
                        None => {
                            restored.session_index.insert(h, restored.sessions.len());
                            restored.sessions.push((key.clone(), Vec::new()));
                            restored.sessions.len() - 1
                        }
                    };
                    restored.sessions[i].1.push(Session { start, end, pane });
                }
                _ => {
                    let panes = restored.ranges.entry(start).or_default();
                    panes
                        .index
                        .insert(HashableValue(key.clone()), panes.panes.len());
                    panes.panes.push(pane);
                }
            }
        }
        *self = restored;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Compilation.
// ---------------------------------------------------------------------------------

/// Milliseconds per `unit` of an `interval`/`gap`/... `{size, unit}` object.
fn unit_millis(unit: &str) -> Option<i64> {
    Some(match unit {
        "ms" | "millisecond" | "milliseconds" => 1,
        "second" | "seconds" => 1_000,
        "minute" | "minutes" => 60_000,
        "hour" | "hours" => 3_600_000,
        "day" | "days" => 86_400_000,
        _ => return None,
    })
}

/// A duration written `{size: 5, unit: "second"}`, in milliseconds.
fn duration(spec: &Value, path: &str, allow_zero: bool) -> Result<i64, CompileError> {
    let bad = |m: String| CompileError::new(path, m);
    let d = spec.as_document().ok_or_else(|| {
        bad(format!(
            "expected {{size: <number>, unit: \"second\"}}, found {}",
            spec.to_json()
        ))
    })?;
    for k in d.keys() {
        if k != "size" && k != "unit" {
            return Err(bad(format!("unknown field '{k}' (expected size and unit)")));
        }
    }
    let size = d
        .get("size")
        .and_then(Value::as_i64_exact)
        .filter(|n| *n > 0 || (allow_zero && *n == 0))
        .ok_or_else(|| {
            CompileError::new(
                path_key(path, "size"),
                "expected a positive integer number of units",
            )
        })?;
    let unit = d.get("unit").and_then(Value::as_str).ok_or_else(|| {
        CompileError::new(
            path_key(path, "unit"),
            "expected a unit: \"ms\", \"second\", \"minute\", \"hour\" or \"day\"",
        )
    })?;
    let ms = unit_millis(unit).ok_or_else(|| {
        CompileError::new(
            path_key(path, "unit"),
            format!("unknown unit '{unit}' (use ms, second, minute, hour or day)"),
        )
    })?;
    size.checked_mul(ms)
        .ok_or_else(|| bad("the duration is too large".into()))
}

fn compile_tumbling(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    compile_window("$tumblingWindow", spec, path, cx)
}

fn compile_hopping(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    compile_window("$hoppingWindow", spec, path, cx)
}

fn compile_session(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    compile_window("$sessionWindow", spec, path, cx)
}

fn compile_window(
    name: &'static str,
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let d = spec.as_document().ok_or_else(|| {
        CompileError::new(
            path,
            format!("{name} takes an object, found {}", spec.type_name()),
        )
    })?;
    let session = name == "$sessionWindow";
    let mut allowed: Vec<&str> = vec![
        "pipeline",
        "allowedLateness",
        "partitionBy",
        "timeField",
        "lateData",
    ];
    if session {
        allowed.push("gap");
    } else {
        allowed.extend(["interval", "offset", "idleTimeout", "boundary"]);
        if name == "$hoppingWindow" {
            allowed.push("hopSize");
        }
    }
    for k in d.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(CompileError::new(
                path_key(path, k),
                format!(
                    "unknown {name} option '{k}' (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let required = |key: &str| {
        d.get(key)
            .ok_or_else(|| CompileError::new(path, format!("{name} needs '{key}'")))
    };
    let optional_duration = |key: &str| -> Result<Option<i64>, CompileError> {
        d.get(key)
            .map(|v| duration(v, &path_key(path, key), true))
            .transpose()
    };
    let (kind, size) = if session {
        let gap = duration(required("gap")?, &path_key(path, "gap"), false)?;
        (Kind::Session { gap }, gap)
    } else {
        let size = duration(required("interval")?, &path_key(path, "interval"), false)?;
        if name == "$hoppingWindow" {
            let hop = duration(required("hopSize")?, &path_key(path, "hopSize"), false)?;
            if hop > size {
                return Err(CompileError::new(
                    path_key(path, "hopSize"),
                    "hopSize must not exceed the interval (events between windows would be lost)",
                ));
            }
            (Kind::Hopping { hop }, size)
        } else {
            (Kind::Tumbling, size)
        }
    };
    let processing_time = match d.get("boundary") {
        None => false,
        Some(Value::String(s)) if s == "eventTime" => false,
        Some(Value::String(s)) if s == "processingTime" => true,
        Some(other) => {
            return Err(CompileError::new(
                path_key(path, "boundary"),
                format!(
                    "expected \"eventTime\" or \"processingTime\", found {}",
                    other.to_json()
                ),
            ))
        }
    };
    let late_data = match d.get("lateData") {
        None => LateData::Drop,
        Some(Value::String(s)) if s == "drop" => LateData::Drop,
        Some(Value::String(s)) if s == "sideOutput" => LateData::SideOutput,
        Some(other) => {
            return Err(CompileError::new(
                path_key(path, "lateData"),
                format!(
                    "expected \"drop\" or \"sideOutput\", found {}",
                    other.to_json()
                ),
            ))
        }
    };
    let inner_path = path_key(path, "pipeline");
    let inner_spec = required("pipeline")?;
    if let Some(items) = inner_spec.as_array() {
        for (i, item) in items.iter().enumerate() {
            let nested = item
                .as_document()
                .and_then(|s| s.keys().next())
                .filter(|k| WINDOW_STAGES.contains(&k.as_str()));
            if let Some(k) = nested {
                return Err(CompileError::new(
                    path_index(&inner_path, i),
                    format!("{k} cannot be nested inside {name}"),
                ));
            }
        }
    }
    let inner = Pipeline::from_stages(compile_stages(inner_spec, &inner_path, cx)?);
    let expr = |key: &str, cx: &mut CompileCtx| {
        d.get(key)
            .map(|v| compile_expr(v, &path_key(path, key), cx))
            .transpose()
    };
    let config = WindowConfig {
        name,
        kind,
        size,
        offset: optional_duration("offset")?.unwrap_or(0),
        allowed_lateness: optional_duration("allowedLateness")?.unwrap_or(0),
        idle_timeout: optional_duration("idleTimeout")?,
        processing_time,
        partition_by: expr("partitionBy", cx)?,
        time_field: expr("timeField", cx)?,
        late_data,
        inner: Mutex::new(inner),
    };
    Ok(Box::new(WindowStage::new(Arc::new(config))))
}
