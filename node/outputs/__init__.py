"""Results out of the node: DICOM Structured Reports (TID 1500, TID 4000), HL7 v2.5.1 ORU^R01 and
the transports that deliver them (DICOM C-STORE, MLLP). The outbox (node.outbox) decides when."""
