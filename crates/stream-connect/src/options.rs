//! Option checks shared by the connectors.

use stream_core::streaming::{ConnectorConfig, DefinitionError};

/// Rejects options this connector does not know, so a misspelt key (`pollIntervall`)
/// fails loudly instead of being ignored.
pub(crate) fn check_known(config: &ConnectorConfig, known: &[&str]) -> Result<(), DefinitionError> {
    for key in config.options.keys() {
        if !known.contains(&key.as_str()) {
            return Err(config.option_error(
                key,
                format!(
                    "unknown option '{key}' for the {} connector (expected one of: {})",
                    config.connector_type,
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A positive integer option.
#[cfg(feature = "generator")]
pub(crate) fn positive_u64(
    config: &ConnectorConfig,
    key: &str,
) -> Result<Option<u64>, DefinitionError> {
    match config.u64_option(key)? {
        Some(0) => Err(config.option_error(key, "expected a positive integer, found 0")),
        other => Ok(other),
    }
}
