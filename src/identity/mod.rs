//! Identity: NHS numbers, linking each trust's Patient to one Person.

pub mod nhs_number;
