//! Conformance of the overlay backend.
berth_tests::conformance!(overlay, berth_tests::pools::overlay::setup);
