"""``ExpertPlacement`` (group ``eplb.io``, version ``v1alpha1``, short name ``xpl``).

These models are the single source of truth: ``crds/`` is generated from them
(``python -m eplb_operator.api.crd``), field descriptions become ``kubectl explain`` text,
and cross-field rules are CEL expressions the API server evaluates (``x-kubernetes-validations``).
Spec fields are integers, never floats (fractions are in thousandths: ``…Permille``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from eplb_operator.placement.topology import Topology

GROUP = "eplb.io"
VERSION = "v1alpha1"
KIND = "ExpertPlacement"
PLURAL = "expertplacements"
SINGULAR = "expertplacement"
SHORT_NAMES = ["xpl"]
API_VERSION = f"{GROUP}/{VERSION}"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields rejected (as a structural schema prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LabelSelectorRequirement(ApiModel):
    key: str = Field(description="Label key the selector applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values."
    )
    values: list[str] | None = Field(
        default=None, description="Values for In and NotIn; empty for Exists and DoesNotExist."
    )


class LabelSelector(ApiModel):
    match_labels: dict[str, str] | None = Field(
        default=None, description="Pods must carry all of these labels."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Pods must satisfy all of these requirements."
    )

    def to_query(self) -> str:
        """The selector as the ``labelSelector`` query string of a list or watch."""
        terms = [f"{k}={v}" for k, v in sorted((self.match_labels or {}).items())]
        for requirement in self.match_expressions or []:
            values = ",".join(requirement.values or [])
            terms.append(
                {
                    "In": f"{requirement.key} in ({values})",
                    "NotIn": f"{requirement.key} notin ({values})",
                    "Exists": requirement.key,
                    "DoesNotExist": f"!{requirement.key}",
                }[requirement.operator]
            )
        return ",".join(terms)


MAX_RANKS_PER_POD = 64

# Labels the workload controllers put on their pods (read by rankFrom).
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"


class PodsSpec(ApiModel):
    """How serving pods say which expert-parallel group they belong to and which EP ranks
    they host: pod ``i`` of a group hosts ranks ``[i*ranksPerPod, (i+1)*ranksPerPod)``."""

    rank_from: Literal["Label", "StatefulSetOrdinal", "LeaderWorkerSet"] = Field(
        default="Label",
        description="Where a pod's group and index come from. Label: the labels groupLabel "
        "and rankLabel. StatefulSetOrdinal: the group is the pod's StatefulSet (one "
        "StatefulSet per EP group), the index its ordinal (label "
        "apps.kubernetes.io/pod-index). LeaderWorkerSet: the group is a LeaderWorkerSet group "
        "(labels leaderworkerset.sigs.k8s.io/name and group-index), the index the worker "
        "index (leaderworkerset.sigs.k8s.io/worker-index; the leader is 0).",
    )
    ranks_per_pod: int = Field(
        default=1,
        ge=1,
        le=MAX_RANKS_PER_POD,
        description="EP ranks (GPUs) each pod hosts, one expert table per rank; must divide "
        "topology.ranks. A group has topology.ranks / ranksPerPod pods.",
    )
    group_label: str = Field(
        default="eplb.io/group",
        description="rankFrom Label: label naming a pod's EP group (one serving replica); "
        "pods of one group exchange weights, groups share a placement.",
    )
    rank_label: str = Field(
        default="eplb.io/rank",
        description="rankFrom Label: label holding a pod's index within its group (its EP "
        "rank when ranksPerPod is 1).",
    )
    control_port: int = Field(
        default=8470,
        ge=1,
        le=65535,
        description="Port of the sidecar's control API (a pod annotation "
        "eplb.io/control-port overrides it).",
    )
    metrics_port: int = Field(
        default=9470,
        ge=1,
        le=65535,
        description="Port of the sidecar's /metrics, scraped directly when no Prometheus is "
        "set (annotation eplb.io/metrics-port overrides it).",
    )
    transfer_port: int = Field(
        default=29470,
        ge=1,
        le=65535,
        description="Port of the sidecar's rendezvous store for peer weight transfers "
        "(annotation eplb.io/transfer-port overrides it).",
    )


# Rules of the model shape (``self`` is spec.model): the API server evaluates them (CEL), and
# so does ModelShape.  Each layer id once is the list type (``set``) of layerIds; their order
# is ``isSorted()``, and their largest ``max()``, both from Kubernetes' CEL list library:
# linear for the API server's cost budget and for the models (``api.validation`` gives celpy
# the two functions).
MODEL_RULES: list[dict[str, str]] = [
    cel(
        "!has(self.layerIds) ? true : size(self.layerIds) == self.layers",
        "model.layerIds must hold one engine layer id per MoE layer (model.layers entries)",
    ),
    cel(
        "!has(self.layerIds) ? true : self.layerIds.isSorted()",
        "model.layerIds must be in increasing order: the order of the model's layers",
    ),
    cel(
        "!has(self.hiddenLayers) ? true : has(self.layerIds) ? "
        "size(self.layerIds) == 0 || self.layerIds.max() < self.hiddenLayers "
        ": self.hiddenLayers >= self.layers",
        "model.hiddenLayers counts every hidden layer, dense ones included: it must be larger "
        "than every engine layer id (model.layerIds, default 0..layers-1)",
    ),
]

MAX_LAYERS = 1024
MAX_HIDDEN_LAYERS = 4096


class ModelShape(ApiModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": MODEL_RULES},  # type: ignore[dict-item]
    )

    name: str | None = Field(default=None, description="Model name, e.g. deepseek-ai/DeepSeek-V3.")
    layers: int = Field(ge=1, le=MAX_LAYERS, description="MoE layers.")
    experts: int = Field(ge=1, le=8192, description="Logical (routed) experts per MoE layer.")
    groups: int = Field(
        default=1,
        ge=1,
        le=8192,
        description="Expert groups (DeepSeek's node-limited routing: 8); must divide experts.",
    )
    layer_ids: list[Annotated[int, Field(ge=0, le=MAX_HIDDEN_LAYERS - 1)]] | None = Field(
        default=None,
        max_length=MAX_LAYERS,
        description="The engine's index, among all hidden layers, of each MoE layer, in "
        "increasing order (DeepSeek-V3: 3..60, its first 3 layers are dense); default "
        "0..layers-1.",
        json_schema_extra={"x-kubernetes-list-type": "set"},  # each id once
    )
    hidden_layers: int | None = Field(
        default=None,
        ge=1,
        le=MAX_HIDDEN_LAYERS,
        description="The model's num_hidden_layers, dense layers included (DeepSeek-V3: 61).",
    )

    def engine_layer_ids(self) -> list[int]:
        """``[layers]``: the engine layer id of each MoE layer (the default when unset)."""
        return list(self.layer_ids) if self.layer_ids is not None else list(range(self.layers))

    @field_validator("layer_ids")
    @classmethod
    def _each_id_once(cls, layer_ids: list[int] | None) -> list[int] | None:
        """The ``set`` list type of layerIds, which the API server enforces and pydantic does
        not, checked by the same code as the test cluster's and with the server's message."""
        from eplb_operator.api.validation import duplicate_message, repeated_items

        repeated = repeated_items(layer_ids or [])
        if repeated:
            raise ValueError(duplicate_message(repeated[0][1]))
        return layer_ids

    @model_validator(mode="after")
    def _model_rules(self) -> ModelShape:
        """The CRD's CEL rules of spec.model, evaluated by the same code the test cluster uses."""
        from eplb_operator.api.validation import evaluate_rules

        failed = evaluate_rules(MODEL_RULES, self.model_dump(by_alias=True, exclude_none=True))
        if failed:
            raise ValueError("; ".join(failed))
        return self


class TopologySpec(ApiModel):
    ranks: int = Field(ge=1, le=16384, description="EP ranks (GPUs) in one serving replica.")
    slots_per_rank: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Physical expert slots per rank; set this or redundantExperts.",
    )
    redundant_experts: int | None = Field(
        default=None,
        ge=0,
        le=65536,
        description="Extra slots beyond one per expert, spread evenly over ranks; set this or "
        "slotsPerRank.",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Nodes the ranks span (fast links inside a node); must divide ranks.",
    )


class ConfigMapKeyRef(ApiModel):
    name: str = Field(description="ConfigMap in the ExpertPlacement's namespace.")
    key: str = Field(default="placement.json", description="Key holding the mapping.")


class OfflineSpec(ApiModel):
    """A fixed mapping kept in Git (written by ``eplb plan``), rolled out as given."""

    config_map_ref: ConfigMapKeyRef = Field(description="Where the mapping lives.")


class OnlineSpec(ApiModel):
    """Rebalance from measured load, on an interval."""

    interval_seconds: int = Field(
        default=300, ge=10, le=86400, description="How often to consider a rebalance."
    )
    window_seconds: int = Field(
        default=600, ge=10, le=604800, description="Load window the decision is based on."
    )
    mode: Literal["auto", "hierarchical", "global"] = Field(
        default="auto",
        description="Placement mode; auto = hierarchical when groups divide over nodes.",
    )
    similarity_threshold_permille: int = Field(
        default=990,
        ge=0,
        le=1000,
        description="A layer whose load is at least this similar (cosine, thousandths) to the "
        "load its placement came from keeps it.",
    )
    min_gain_permille: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Predicted imbalance reduction (thousandths) a layer must offer to be updated.",
    )
    slack_permille: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Imbalance (thousandths) a migration-aware plan may give up to move fewer "
        "weights than a fresh one.",
    )
    max_moves: int | None = Field(
        default=None,
        ge=0,
        description="Most expert slots one rebalance may change, all layers together.",
    )


class RolloutSpec(ApiModel):
    strategy: Literal["HotSwap", "Restart"] = Field(
        default="HotSwap",
        description="HotSwap: sidecars move expert weights inside running engines (engine "
        "table). Restart: the operator renders the engine's start-up file into a ConfigMap "
        "and restarts the serving workload (spec.workloadRef) one EP group at a time.",
    )
    min_interval_seconds: int = Field(
        default=1800,
        ge=0,
        le=604800,
        description="Restart only: least time from the end of one restart rollout to the start "
        "of the next (a restart costs minutes of a group's capacity).",
    )
    layers_per_step: int = Field(
        default=4, ge=1, le=1024, description="Layers prepared and committed per barrier round."
    )
    barrier_timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="All pods must prepare within this, or the step aborts everywhere.",
    )
    progress_deadline_seconds: int = Field(
        default=600, ge=1, description="A rollout not done by then is reported as stuck."
    )
    paused: bool = Field(default=False, description="Hold every rollout and rebalance.")
    revision_history_limit: int = Field(
        default=10, ge=0, le=1000, description="Old revisions kept for rollback."
    )


class MetricsSpec(ApiModel):
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus to read load from; unset: scrape the sidecars directly.",
    )
    load_query: str | None = Field(
        default=None,
        description="PromQL override for the load window. It must return one series per "
        "(pod, layer, expert); {namespace}, {pods} (a regex of pod names) and {window} (e.g. "
        "600s) are filled in.",
    )
    timeout_seconds: int = Field(
        default=10, ge=1, le=300, description="Timeout of one Prometheus query or scrape."
    )


WORKLOAD_RULES: list[dict[str, str]] = [
    cel(
        "!has(self.apiVersion) || self.apiVersion == "
        "(self.kind == 'LeaderWorkerSet' ? 'leaderworkerset.x-k8s.io/v1' : 'apps/v1')",
        "apiVersion is apps/v1 for a StatefulSet or Deployment, leaderworkerset.x-k8s.io/v1 "
        "for a LeaderWorkerSet",
    ),
    cel(
        "self.kind != 'LeaderWorkerSet' || !self.name.contains('{group}')",
        "a LeaderWorkerSet holds every EP group (each of its groups is one): name it without "
        "{group}",
    ),
]


class WorkloadRef(ApiModel):
    """The serving workload that a Restart rollout restarts, one EP group at a time."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": WORKLOAD_RULES},  # type: ignore[dict-item]
    )

    api_version: Literal["apps/v1", "leaderworkerset.x-k8s.io/v1"] | None = Field(
        default=None,
        description="API version of the workload: apps/v1 for a StatefulSet or Deployment, "
        "leaderworkerset.x-k8s.io/v1 for a LeaderWorkerSet (unset: its kind's).",
    )
    kind: Literal["StatefulSet", "Deployment", "LeaderWorkerSet"] = Field(
        description="StatefulSet or Deployment (one per EP group, or one for a single group), "
        "or LeaderWorkerSet (one for all groups: each of its groups is an EP group; its "
        "rolloutStrategy partition is the operator's while a rollout runs, to restart one "
        "group at a time)."
    )
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the workload; {group} is replaced by an EP group's name (its "
        "pods' groupLabel), so each group's workload is found: e.g. 'moe-{group}'. A "
        "LeaderWorkerSet is named as it is.",
    )

    def name_of(self, group: str) -> str:
        """The workload of EP group ``group``."""
        return self.name.replace("{group}", group)

    @model_validator(mode="after")
    def _workload_rules(self) -> WorkloadRef:
        """The CRD's CEL rules of spec.workloadRef, evaluated by the same code the test
        cluster uses."""
        from eplb_operator.api.validation import evaluate_rules

        failed = evaluate_rules(WORKLOAD_RULES, self.model_dump(by_alias=True, exclude_none=True))
        if failed:
            raise ValueError("; ".join(failed))
        return self


class RebalanceTrigger(ApiModel):
    id: str | None = Field(
        default=None,
        max_length=253,
        description="Change to request a rebalance now; status.observedRebalanceId echoes it.",
    )


# Cross-field rules of the spec: the API server evaluates them (CEL), and so do the models.
SPEC_RULES: list[dict[str, str]] = [
    cel(
        "has(self.topology.slotsPerRank) != has(self.topology.redundantExperts)",
        "set exactly one of topology.slotsPerRank and topology.redundantExperts",
    ),
    cel(
        "self.topology.ranks % self.topology.nodes == 0",
        "topology.nodes must divide topology.ranks",
    ),
    cel(
        "self.model.experts % self.model.groups == 0",
        "model.groups must divide model.experts",
    ),
    cel(
        "!has(self.topology.redundantExperts) || "
        "(self.model.experts + self.topology.redundantExperts) % self.topology.ranks == 0",
        "model.experts + topology.redundantExperts must be a multiple of topology.ranks",
    ),
    cel(
        "!has(self.topology.slotsPerRank) || "
        "self.topology.ranks * self.topology.slotsPerRank >= self.model.experts",
        "topology.ranks x topology.slotsPerRank must be at least model.experts",
    ),
    cel(
        "!has(self.pods) || !has(self.pods.ranksPerPod) || "
        "self.topology.ranks % self.pods.ranksPerPod == 0",
        "pods.ranksPerPod must divide topology.ranks (a pod hosts whole EP ranks of one group)",
    ),
    cel("has(self.offline) || has(self.online)", "set offline, online, or both"),
    cel(
        "self.rollout.strategy != 'Restart' || has(self.workloadRef)",
        "rollout.strategy Restart needs workloadRef: the workload whose pods restart",
    ),
    cel(
        "!has(self.workloadRef) || self.workloadRef.kind != 'LeaderWorkerSet' || "
        "(has(self.pods) && has(self.pods.rankFrom) && self.pods.rankFrom == 'LeaderWorkerSet')",
        "workloadRef kind LeaderWorkerSet needs pods.rankFrom LeaderWorkerSet: its groups are "
        "the EP groups",
    ),
    cel(
        "(self.rollout.strategy == 'Restart') == (self.engine != 'table')",
        "engine sglang, trtllm and vllm take placements at start-up (rollout.strategy Restart); "
        "engine table swaps them live (rollout.strategy HotSwap)",
    ),
    cel(
        "self.engine != 'vllm' || !has(self.offline)",
        "engine vllm plans its own placement from load statistics at start-up: it takes no "
        "offline mapping (use online)",
    ),
]


class ExpertPlacementSpec(ApiModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"x-kubernetes-validations": SPEC_RULES},  # type: ignore[dict-item]
    )

    selector: LabelSelector = Field(description="Serving pods this placement applies to.")
    # default {} lets the API server fill in the defaults of the fields inside.
    pods: PodsSpec = Field(
        default_factory=PodsSpec,
        description="How pods declare group and rank.",
        json_schema_extra={"default": {}},
    )
    model: ModelShape = Field(description="Shape of the MoE model.")
    topology: TopologySpec = Field(description="Ranks, slots and nodes of one serving replica.")
    offline: OfflineSpec | None = Field(default=None, description="Mapping from Git.")
    online: OnlineSpec | None = Field(default=None, description="Rebalancing from live load.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How changes roll out.",
        json_schema_extra={"default": {}},
    )
    engine: Literal["table", "sglang", "trtllm", "vllm"] = Field(
        default="table",
        description="What serves the model: table (an engine with the EPLB engine table, hot "
        "swapped), or sglang, trtllm or vllm, which get the placement in their own start-up "
        "file (--init-expert-location, moe_config.load_balancer, eplb_config.read_stats_path).",
    )
    workload_ref: WorkloadRef | None = Field(
        default=None, description="Workload a Restart rollout restarts."
    )
    metrics: MetricsSpec = Field(
        default_factory=MetricsSpec,
        description="Where load comes from.",
        json_schema_extra={"default": {}},
    )
    rebalance: RebalanceTrigger | None = Field(default=None, description="Manual trigger.")
    pinned_revision: int | None = Field(
        default=None,
        ge=1,
        description="Serve this stored revision and hold it (a rollback); unset to resume "
        "offline and online updates.",
    )

    def placement_topology(self) -> Topology:
        """The policy's view of this spec: experts, ranks, slots per rank, nodes, groups."""
        if self.topology.redundant_experts is not None:
            return Topology.from_redundant(
                self.model.experts,
                self.topology.ranks,
                self.topology.redundant_experts,
                self.topology.nodes,
                self.model.groups,
            )
        assert self.topology.slots_per_rank is not None  # the CEL rules guarantee one of them
        return Topology(
            self.model.experts,
            self.topology.ranks,
            self.topology.slots_per_rank,
            self.topology.nodes,
            self.model.groups,
        )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ExpertPlacementSpec:
        """The CRD's CEL rules, evaluated by the same code the test cluster uses."""
        from eplb_operator.api.validation import evaluate_rules

        failed = evaluate_rules(SPEC_RULES, self.model_dump(by_alias=True, exclude_none=True))
        if failed:
            raise ValueError("; ".join(failed))
        return self


class Condition(ApiModel):
    type: str = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase reason, e.g. BarrierTimeout.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, ge=0)


class LastRebalance(ApiModel):
    time: str = Field(description="When the rebalance finished (RFC 3339).")
    predicted_balancedness: float | None = Field(default=None, description="Mean over layers.")
    observed_balancedness: float | None = Field(default=None, description="Measured afterwards.")
    moves: int = Field(default=0, ge=0, description="Expert slots changed.")
    layers_updated: int = Field(default=0, ge=0)


class GroupStatus(ApiModel):
    """One EP group under a Restart rollout: which revision its pods serve."""

    name: str = Field(description="The group (its pods' groupLabel).")
    revision: str | None = Field(
        default=None, description="Revision every pod of the group serves; unset while mixed."
    )
    pods: int = Field(default=0, ge=0, description="Pods of the group.")
    ready_pods: int = Field(default=0, ge=0, description="Ready pods of the group.")
    restarted_at: str | None = Field(
        default=None, description="When the group was last restarted (RFC 3339)."
    )
    restarting: str | None = Field(
        default=None, description="Revision the group is restarting onto, until it is back."
    )


class ExpertPlacementStatus(ApiModel):
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded (kstatus-compatible).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: str | None = Field(default=None, description="Summary for kubectl get.")
    balancedness: float | None = Field(
        default=None, description="Mean rank load / max rank load, mean over layers (1 is perfect)."
    )
    current_revision: str | None = Field(default=None, description="Revision in service.")
    target_revision: str | None = Field(default=None, description="Revision being rolled out.")
    layers_committed: int | None = Field(default=None, ge=0)
    layers_total: int | None = Field(default=None, ge=0)
    last_rebalance: LastRebalance | None = None
    observed_rebalance_id: str | None = None
    groups: list[GroupStatus] | None = Field(
        default=None,
        description="Restart rollouts: the revision each EP group serves.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ObjectMeta(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
    name: str | None = None
    namespace: str | None = None


class ExpertPlacement(ApiModel):
    api_version: Literal["eplb.io/v1alpha1"] = "eplb.io/v1alpha1"
    kind: Literal["ExpertPlacement"] = "ExpertPlacement"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExpertPlacementSpec
    status: ExpertPlacementStatus | None = None


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ranks", "type": "integer", "jsonPath": ".spec.topology.ranks"},
    {"name": "Per-Pod", "type": "integer", "jsonPath": ".spec.pods.ranksPerPod"},
    {"name": "Rank-From", "type": "string", "jsonPath": ".spec.pods.rankFrom", "priority": 1},
    {"name": "Balancedness", "type": "number", "jsonPath": ".status.balancedness"},
    {"name": "Revision", "type": "string", "jsonPath": ".status.currentRevision"},
    {"name": "Layers", "type": "integer", "jsonPath": ".status.layersCommitted"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
