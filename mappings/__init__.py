"""Record -> FHIR resources: pure mapping functions and the agency profiles they read.

``mappings.profile`` loads and validates an agency profile (TOML);
``mappings.resources`` turns an :class:`~connector.records.EncounterRecord`
and a profile into ``fhir.resources.R4B`` models. Import the submodules
directly: ``resources`` pulls in fhir.resources (~140 ms), which CLI paths
that do not map should not pay for.
"""
