//! Every acquisition runs in a `lockman.acquire` span carrying resource,
//! backend, wait and outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod common;

use common::scenario;
use lockman::MemoryLockManager;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Records the fields of `lockman.*` spans.
#[derive(Clone, Default)]
struct SpanFields(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Collect<'a>(&'a mut HashMap<String, String>);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = HashMap::from([("name".to_owned(), attrs.metadata().name().to_owned())]);
            attrs.record(&mut Collect(&mut fields));
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<HashMap<String, String>>()
        {
            values.record(&mut Collect(fields));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && let Some(fields) = span.extensions().get::<HashMap<String, String>>()
        {
            self.0.lock().expect("poisoned").push(fields.clone());
        }
    }
}

#[test]
fn every_acquisition_has_a_span_with_its_outcome() {
    let spans = SpanFields::default();
    let subscriber =
        tracing_subscriber::registry().with(spans.clone()).with(tracing_subscriber::filter::LevelFilter::DEBUG);
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(scenario(&MemoryLockManager::default()));
    });
    let spans = spans.0.lock().expect("poisoned").clone();
    let acquires: Vec<_> = spans.iter().filter(|s| s["name"] == "lockman.acquire").collect();
    assert_eq!(acquires.len(), 3, "{spans:#?}");
    let outcomes: Vec<&str> = acquires.iter().map(|s| s["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["acquired", "timed_out", "acquired"]);
    for span in acquires {
        assert_eq!(span["resource"], "bus");
        assert_eq!(span["backend"], "memory");
        let waited: f64 = span["waited_ms"].parse().expect("waited_ms is a number");
        assert!(waited >= 0.0);
    }
}
