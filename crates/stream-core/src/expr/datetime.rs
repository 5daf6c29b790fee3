//! Calendar arithmetic on epoch milliseconds with time zones, shared by the date
//! operators and window stages.
