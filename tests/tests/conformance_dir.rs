//! Conformance of the dir backend.
berth_tests::conformance!(dir, berth_tests::pools::dir::setup);
