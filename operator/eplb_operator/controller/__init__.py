"""The operator: kopf handlers over pure decision modules (conditions, pod checks)."""
