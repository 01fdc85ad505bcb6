//! The vipgate cluster file: typed schema, strict parsing, semantic validation.
