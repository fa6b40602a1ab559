"""The paper's qualitative findings, checked on the runs at hand from their typed results.

Each check states the claim as a test with an explicit tolerance, and returns a :class:`Finding`
that says whether it holds on these runs, with the numbers that decide it. The report prints every
finding, the ones that fail first, so a reader sees plainly where the paper does not reproduce here.
"""

from __future__ import annotations

from .figures import groups_of
from .finding import Finding, pct as _pct
from .layer_weights import check_layer_weights
from .runs import RunResults
from .series import layer_series, norm_ratio_series, number, row_to_last, spearman
from .tables import DEFAULT_EXIT_TOLERANCE, operating_point
from .variants import as_variant, trained_pooling, variant_names

# Tolerances of the checks (fractions of accuracy, or similarity units).
LAYER_ACC_TOLERANCE = 0.005   # aligned may trail standard by half a point at a layer and still "match"
FINAL_ACC_TOLERANCE = 0.02    # "final accuracy within 2 points"
SHALLOW_GAIN = 0.05           # aligned lifts layers 1..L/2 by at least 5 points on average
AGREEMENT_MIN = 0.8           # COS-CKA Spearman over layer pairs counted as "COS tracks CKA"
MLP_CKA_GAP = 0.2             # plain MLP: CKA to last exceeds COS to last by this much on average
THM21_MAX_VIOLATIONS = 0.1    # Theorem 2.1 "holds" when at most 10% of layer triples violate it
SPEEDUP_RATIO = 0.9           # shared head reaches 90% of per-layer heads' speed-up at equal accuracy loss
PROBE_TOLERANCE = 0.02        # "keeps transferability": aligned probe accuracy within 2 points of standard


def _mode(runs: list[RunResults], mode: str) -> RunResults | None:
    return next((r for r in runs if r.mode == mode and r.analysis), None)


def _inner_layers(r: RunResults) -> list[int]:
    L = r.n_layers or 0
    return list(range(1, L))


def check_aligned_vs_standard(group: str, runs: list[RunResults]) -> list[Finding]:
    """Aligned accuracy >= standard below L; final within 2 points; COS to last higher below L."""
    std, ali = _mode(runs, "standard"), _mode(runs, "aligned")
    if std is None or ali is None:
        return []
    scope = f"{group}: {ali.name} vs {std.name}"
    out = []
    acc_s, acc_a = layer_series(std.analysis, "accuracy"), layer_series(ali.analysis, "accuracy")
    inner = [l for l in _inner_layers(ali) if l in acc_s and l in acc_a]
    worse = [l for l in inner if acc_a[l] < acc_s[l] - LAYER_ACC_TOLERANCE]
    gaps = ", ".join(f"l={l}: {_pct(acc_a[l])} vs {_pct(acc_s[l])}" for l in (worse or inner))
    out.append(Finding(
        claim=f"Aligned training makes intermediate layers readable: aligned accuracy >= standard "
              f"(-{100 * LAYER_ACC_TOLERANCE:.1f} pt) at every layer 1..L-1",
        scope=scope,
        status="not checked" if not inner else ("does not hold" if worse else "holds"),
        evidence=(f"aligned below standard at {len(worse)} of {len(inner)} layers: {gaps}" if worse
                  else f"per layer (aligned vs standard): {gaps}")))
    half = [l for l in range(1, (ali.n_layers or 0) // 2 + 1) if l in acc_s and l in acc_a]
    if half:
        gain = sum(acc_a[l] - acc_s[l] for l in half) / len(half)
        out.append(Finding(
            claim=f"Aligned training lifts the shallow half: mean accuracy gain over layers 1..{half[-1]} >= "
                  f"{100 * SHALLOW_GAIN:.0f} points (paper: about +40 pt on CIFAR-10, +34 pt on SST-2)",
            scope=scope,
            status="holds" if gain >= SHALLOW_GAIN else "does not hold",
            evidence=f"mean gain {100 * gain:+.2f} pt; " + ", ".join(
                f"l={l}: {_pct(acc_a[l])} vs {_pct(acc_s[l])}" for l in half)))
    L = ali.n_layers
    if L in acc_s and L in acc_a:
        diff = acc_a[L] - acc_s[L]
        out.append(Finding(
            claim=f"The last layer keeps its accuracy: aligned final accuracy within "
                  f"{100 * FINAL_ACC_TOLERANCE:.0f} points of standard",
            scope=scope,
            status="holds" if diff >= -FINAL_ACC_TOLERANCE else "does not hold",
            evidence=f"layer {L}: aligned {_pct(acc_a[L])}, standard {_pct(acc_s[L])} "
                     f"(difference {100 * diff:+.2f} pt)"))
    cos_s, cos_a = layer_series(std.analysis, "cos_to_last"), layer_series(ali.analysis, "cos_to_last")
    inner = [l for l in _inner_layers(ali) if l in cos_s and l in cos_a]
    lower = [l for l in inner if cos_a[l] <= cos_s[l]]
    if inner:
        listed = ", ".join(f"l={l}: {cos_a[l]:.3f} vs {cos_s[l]:.3f}" for l in (lower or inner))
        out.append(Finding(
            claim="Aligned training raises similarity to the last layer: COS(l, L) of aligned > standard at "
                  "every layer 1..L-1",
            scope=scope,
            status="does not hold" if lower else "holds",
            evidence=(f"aligned not higher at {len(lower)} of {len(inner)} layers: {listed}" if lower
                      else f"per layer (aligned vs standard): {listed}")))
    return out


def check_cos_rises(r: RunResults) -> Finding | None:
    """Theorem 2.1's consequence: COS to the last layer increases with depth (l = 1..L)."""
    s = layer_series(r.analysis, "cos_to_last")
    layers = [l for l in range(1, (r.n_layers or 0) + 1) if l in s]
    if len(layers) < 3:
        return None
    drops = [(a, b) for a, b in zip(layers, layers[1:]) if s[b] < s[a]]
    return Finding(
        claim="COS to the last layer increases with depth (Theorem 2.1: closer layers are more similar)",
        scope=r.name,
        status="does not hold" if drops else "holds",
        evidence=("drops at " + ", ".join(f"{a}->{b}: {s[a]:.3f}->{s[b]:.3f}" for a, b in drops)) if drops
        else f"rises from {s[layers[0]]:.3f} at l={layers[0]} to {s[layers[-1]]:.3f} at l={layers[-1]}",
        per_run=True, short=f"{len(drops)} drop(s)" if drops else f"{s[layers[0]]:.2f} -> {s[layers[-1]]:.2f}")


def check_accuracy_monotone(r: RunResults) -> Finding | None:
    """Layer-wise accuracy rises with depth: no drop of more than half a point between consecutive layers 1..L."""
    s = layer_series(r.analysis, "accuracy")
    layers = [l for l in range(1, (r.n_layers or 0) + 1) if l in s]
    if len(layers) < 3:
        return None
    drops = [(a, b) for a, b in zip(layers, layers[1:]) if s[b] < s[a] - LAYER_ACC_TOLERANCE]
    return Finding(
        claim=f"Layer-wise accuracy rises monotonically with depth (no drop of more than "
              f"{100 * LAYER_ACC_TOLERANCE:.1f} pt between consecutive layers 1..L)",
        scope=r.name,
        status="does not hold" if drops else "holds",
        evidence=("drops at " + ", ".join(f"{a}->{b}: {_pct(s[a])}->{_pct(s[b])}" for a, b in drops)) if drops
        else f"rises from {_pct(s[layers[0]])} at l={layers[0]} to {_pct(s[layers[-1]])} at l={layers[-1]}",
        per_run=True, short=f"{len(drops)} drop(s)" if drops else "monotone")


def check_minimal_depth(group: str, runs: list[RunResults]) -> list[Finding]:
    """The shared head reveals the minimal depth: the aligned run reaches 97.5% of its final accuracy at a
    layer before L and before the standard run does (the paper: 12-layer aligned DeiT by about layer 7)."""
    from .series import effective_depth

    std, ali = _mode(runs, "standard"), _mode(runs, "aligned")
    if std is None or ali is None:
        return []
    (d_s, rule), (d_a, _) = effective_depth(std.analysis), effective_depth(ali.analysis)
    if d_s is None or d_a is None:
        return []
    L = ali.n_layers
    return [Finding(
        claim="Aligned training reveals a minimal depth: the aligned run's effective depth (smallest l with "
              "accuracy >= 97.5% of its layer-L accuracy) is below L and below the standard run's (paper: "
              "12-layer aligned DeiT-S at about layer 7)",
        scope=f"{group}: {ali.name} vs {std.name}",
        status="holds" if d_a < (L or 0) and d_a < d_s else "does not hold",
        evidence=f"effective depth aligned {d_a:.0f}, standard {d_s:.0f}, of L = {L} ({rule})")]


def check_agreement(r: RunResults) -> Finding | None:
    """COS tracks CKA across layer pairs (the paper shows it visually; we set Spearman >= 0.8)."""
    agree = (r.analysis.cos_cka_agreement if r.analysis else None) or {}
    sp, pe = number(agree.get("spearman")), number(agree.get("pearson"))
    if sp is None:
        return None
    return Finding(
        claim=f"COS follows CKA across layer pairs (Spearman >= {AGREEMENT_MIN})",
        scope=r.name,
        status="holds" if sp >= AGREEMENT_MIN else "does not hold",
        evidence=f"Spearman {sp:.3f}" + (f", Pearson {pe:.3f}" if pe is not None else ""),
        per_run=True, short=f"{sp:.2f}")


def check_norm_ratio(r: RunResults) -> Finding | None:
    """The skip path dominates each block's update (norm ratio > 1; paper: ~2-9 in DeiT-S)."""
    s = norm_ratio_series(r.analysis)
    if not s:
        return None
    below = [l for l in sorted(s) if s[l] <= 1.0]
    return Finding(
        claim="Residual stream dominates every block: ||h|| / ||f(h)|| > 1 (paper: about 2 to 9 in DeiT-S)",
        scope=r.name,
        status="does not hold" if below else "holds",
        evidence=f"range {min(s.values()):.2f} to {max(s.values()):.2f}"
                 + (f"; at or below 1 at blocks {', '.join(map(str, below))}" if below else ""),
        per_run=True, short=f"{min(s.values()):.1f}-{max(s.values()):.1f}")


def check_theory(r: RunResults) -> list[Finding]:
    """Theorems 2.1 and 2.2 on this run, from its analysis's ``theory`` entry (readout/theory.py)."""
    theory = r.analysis.theory if r.analysis else {}
    out = []
    t21 = theory.get("theorem_2_1") or {}
    rate = number(t21.get("cos_matrix_violation_rate"))
    if rate is not None:
        per_sample = number(t21.get("triple_violation_rate"))
        out.append(Finding(
            claim=f"Theorem 2.1: COS(l1, l3) < COS(l2, l3) for l1 < l2 < l3 in the dataset COS matrix "
                  f"(at most {THM21_MAX_VIOLATIONS:.0%} of triples violate it)",
            scope=r.name,
            status="holds" if rate <= THM21_MAX_VIOLATIONS else "does not hold",
            evidence=f"{rate:.1%} of layer triples violate it in the COS matrix"
                     + (f"; per sample {per_sample:.1%} of triples" if per_sample is not None else ""),
            per_run=True, short=f"{rate:.1%} viol."))
    t22 = theory.get("theorem_2_2") or {}
    up, no_up = number(t22.get("prob_increase_given_cos_increase")), number(t22.get("prob_increase_given_no_cos_increase"))
    if up is not None:
        contrast = f", P(p up | COS not up) = {no_up:.3f}" if no_up is not None else " (COS never fell)"
        out.append(Finding(
            claim="Theorem 2.2: where COS to the last layer rises between consecutive layers, the true-class "
                  "probability rises too, in most cases (P(p up | COS up) > 0.5)",
            scope=r.name,
            status="holds" if up > 0.5 else "does not hold",
            evidence=f"P(p up | COS up) = {up:.3f}{contrast}",
            per_run=True, short=f"{up:.2f}"))
    return out


def check_early_exit(group: str, runs: list[RunResults], tolerance: float) -> list[Finding]:
    """Aligned single head: faster than standard at equal accuracy loss; close to per-layer heads."""
    def best(mode: str) -> tuple[RunResults, float, float] | None:
        r = next((x for x in runs if x.mode == mode and x.exits), None)
        if r is None:
            return None
        ex = r.exits.get("confidence") or next(iter(r.exits.values()))
        p = operating_point(ex, tolerance)
        if p is None:
            return None
        return r, float(p.speedup), float(p.accuracy)

    std, ali, multi = best("standard"), best("aligned"), best("multi-head")
    out = []
    tol = f"{100 * tolerance:g} pt"
    if std and ali:
        out.append(Finding(
            claim=f"A shared head exits earlier after aligned training: higher speed-up than the standard model "
                  f"at <= {tol} accuracy loss",
            scope=f"{group}: {ali[0].name} vs {std[0].name}",
            status="holds" if ali[1] > std[1] else "does not hold",
            evidence=f"aligned {ali[1]:.2f}x at {_pct(ali[2])}, standard {std[1]:.2f}x at {_pct(std[2])}"))
    if ali and multi:
        out.append(Finding(
            claim=f"One shared head is nearly as good as per-layer heads: aligned speed-up >= "
                  f"{SPEEDUP_RATIO:.0%} of multi-head at <= {tol} accuracy loss (paper, ImageNet DeiT-S: "
                  f"1.36x at 77.96% vs 1.42x at 78.32%)",
            scope=f"{group}: {ali[0].name} vs {multi[0].name}",
            status="holds" if ali[1] >= SPEEDUP_RATIO * multi[1] else "does not hold",
            evidence=f"aligned {ali[1]:.2f}x at {_pct(ali[2])}, multi-head {multi[1]:.2f}x at {_pct(multi[2])}"))
    return out


def check_mlp(group: str, runs: list[RunResults]) -> list[Finding]:
    """The MLP contrast: without residuals CKA stays high while COS and accuracy stay low; with them the
    three rise together."""
    plain, res = _mode(runs, "plain"), _mode(runs, "residual")
    out = []
    if plain is not None:
        inner = _inner_layers(plain)
        cka = row_to_last(plain.analysis, "cka_matrix")
        cos = layer_series(plain.analysis, "cos_to_last")
        acc = layer_series(plain.analysis, "accuracy")
        inner = [l for l in inner if l in cka and l in cos and l in acc]
        if inner:
            m_cka = sum(cka[l] for l in inner) / len(inner)
            m_cos = sum(cos[l] for l in inner) / len(inner)
            m_acc = sum(acc[l] for l in inner) / len(inner)
            out.append(Finding(
                claim=f"Without residual connections CKA misleads: mean CKA(l, L) over layers 1..L-1 exceeds "
                      f"mean COS(l, L) by > {MLP_CKA_GAP}",
                scope=plain.name,
                status="holds" if m_cka - m_cos > MLP_CKA_GAP else "does not hold",
                evidence=f"mean CKA {m_cka:.3f}, mean COS {m_cos:.3f}, mean shared-head accuracy {_pct(m_acc)}"))
    if res is not None:
        cka = row_to_last(res.analysis, "cka_matrix")
        cos = layer_series(res.analysis, "cos_to_last")
        acc = layer_series(res.analysis, "accuracy")
        layers = [l for l in range(1, (res.n_layers or 0) + 1) if l in cka and l in cos and l in acc]
        if len(layers) >= 3:
            r1 = spearman([cos[l] for l in layers], [acc[l] for l in layers])
            r2 = spearman([cka[l] for l in layers], [acc[l] for l in layers])
            ok = r1 is not None and r2 is not None and r1 > 0.5 and r2 > 0.5
            out.append(Finding(
                claim="With residual connections COS, CKA and accuracy rise together (Spearman with accuracy "
                      "over layers 1..L > 0.5 for both)",
                scope=res.name,
                status="holds" if ok else "does not hold",
                evidence=f"Spearman(COS, accuracy) {r1 if r1 is None else round(r1, 3)}, "
                         f"Spearman(CKA, accuracy) {r2 if r2 is None else round(r2, 3)}"))
    return out


def check_collapse(group: str, runs: list[RunResults]) -> list[Finding]:
    """Neural collapse (Fig. 16): aligned training brings NC1 down at the intermediate layers."""
    import math

    from .collapse import collapse_series

    std, ali = _mode(runs, "standard"), _mode(runs, "aligned")
    if std is None or ali is None:
        return []
    nc_s, nc_a = collapse_series(std.analysis, "nc1"), collapse_series(ali.analysis, "nc1")
    inner = [l for l in _inner_layers(ali) if nc_s.get(l, 0) > 0 and nc_a.get(l, 0) > 0]
    if not inner:
        return []
    gm_s = math.exp(sum(math.log(nc_s[l]) for l in inner) / len(inner))
    gm_a = math.exp(sum(math.log(nc_a[l]) for l in inner) / len(inner))
    return [Finding(
        claim="Aligned training brings neural collapse to shallower layers: geometric-mean NC1 over layers "
              "1..L-1 lower for aligned than standard (the paper's Fig. 16)",
        scope=f"{group}: {ali.name} vs {std.name}",
        status="holds" if gm_a < gm_s else "does not hold",
        evidence=f"geometric mean NC1 aligned {gm_a:.3g}, standard {gm_s:.3g}; " + ", ".join(
            f"l={l}: {nc_a[l]:.3g} vs {nc_s[l]:.3g}" for l in inner))]


def check_probe(group: str, runs: list[RunResults]) -> list[Finding]:
    """Task transfer (App. B.4): aligned layers stay as useful to a linear probe on another task."""
    std = next((r for r in runs if r.mode == "standard" and r.probe), None)
    ali = next((r for r in runs if r.mode == "aligned" and r.probe), None)
    if std is None or ali is None or std.probe.data != ali.probe.data:
        return []
    acc_s = dict(zip(std.probe.layers, std.probe.accuracy))
    acc_a = dict(zip(ali.probe.layers, ali.probe.accuracy))
    layers = [l for l in sorted(acc_a) if l >= 1 and number(acc_a[l]) is not None and number(acc_s.get(l)) is not None]
    if not layers:
        return []
    worse = [l for l in layers if acc_a[l] < acc_s[l] - PROBE_TOLERANCE]
    listed = ", ".join(f"l={l}: {_pct(acc_a[l])} vs {_pct(acc_s[l])}" for l in (worse or layers))
    return [Finding(
        claim=f"Aligned training keeps transferability: a linear probe on {ali.probe.data} reads every "
              f"layer 1..L of the aligned model within {100 * PROBE_TOLERANCE:.0f} points of the standard one",
        scope=f"{group}: {ali.name} vs {std.name}",
        status="does not hold" if worse else "holds",
        evidence=(f"aligned more than {100 * PROBE_TOLERANCE:.0f} pt below at {len(worse)} of {len(layers)} layers: "
                  f"{listed}" if worse else f"probe accuracy per layer (aligned vs standard): {listed}"))]


def check_trained_pooling(group: str, runs: list[RunResults], name: str) -> list[Finding]:
    """The [CLS] counter-example's claim: "the pooling the model was trained with reads the shallow half
    better" holds iff, in every mode, the mean accuracy over layers 1..floor(L/2) of the run's own reading
    is strictly higher than through the ``pooling-<p>`` variant's token."""
    pairs = [(r, layer_series(r.analysis, "accuracy"), layer_series(r.variants[name].analysis, "accuracy"))
             for r in runs if name in r.variants and r.analysis]
    if not pairs:
        return []
    L = int(pairs[0][0].n_layers or 0)
    half = [l for l in range(1, L // 2 + 1) if all(l in own and l in var for _, own, var in pairs)]
    if not half:
        return []
    parts, ok = [], True
    for r, own, var in pairs:
        m_own, m_var = (sum(s[l] for l in half) / len(half) for s in (own, var))
        ok &= m_own > m_var
        parts.append(f"{r.mode or r.name}: {trained_pooling(r)} {_pct(m_own)} vs {name.split('-', 1)[-1]} {_pct(m_var)}")
    return [Finding(
        claim=f"Reading the pooling the model was trained with matters: mean accuracy over layers 1..{half[-1]} "
              f"higher through the trained pooling than through {name.split('-', 1)[-1]}, in every mode",
        scope=f"{group}: {', '.join(r.name for r, _, _ in pairs)}",
        status="holds" if ok else "does not hold",
        evidence="layers 1.." + str(half[-1]) + " mean: " + "; ".join(parts))]


def check_variants(runs: list[RunResults]) -> list[Finding]:
    """Re-readings (``<run>/variants/<name>/``, :mod:`layertrace.report.variants`): the aligned-vs-standard
    checks on every variant of every group, plus the trained-pooling check for ``pooling-*`` variants."""
    out: list[Finding] = []
    for name in variant_names(runs):
        for group, rs in groups_of(runs).items():
            with_v = [r for r in rs if name in r.variants]
            if not with_v:
                continue
            out += check_aligned_vs_standard(f"{group} [{name}]", [as_variant(r, name) for r in with_v])
            if name.startswith("pooling-"):
                out += check_trained_pooling(group, with_v, name)
    return out


def all_findings(runs: list[RunResults], exit_tolerance: float = DEFAULT_EXIT_TOLERANCE) -> list[Finding]:
    """Every check that the runs' data allows, in page order (per group, then per run)."""
    out: list[Finding] = []
    for group, rs in groups_of(runs).items():
        out += check_aligned_vs_standard(group, rs)
        out += check_minimal_depth(group, rs)
        out += check_early_exit(group, rs, exit_tolerance)
        out += check_mlp(group, rs)
        out += check_collapse(group, rs)
        out += check_probe(group, rs)
    out += check_layer_weights(runs)
    out += check_variants(runs)
    for r in runs:
        if r.mode == "plain":  # the paper's claims are about residual networks; check_mlp covers this one
            continue
        for f in (check_accuracy_monotone(r), check_cos_rises(r), check_agreement(r), check_norm_ratio(r)):
            if f is not None:
                out.append(f)
        out += check_theory(r)
    return out
