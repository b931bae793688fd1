"""The ExpertPlacement API: pydantic models (the source of truth), the CRD made from them,
and validation of objects against that CRD (schema and CEL rules)."""
