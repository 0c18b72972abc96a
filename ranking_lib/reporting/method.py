"""The report's method section: the recipe a run's config describes, in words (`method`), one
bold-headed paragraph per part (triplet sampling, network, ranking layer, inference)."""

from __future__ import annotations

from ranking_lib.core.config import RunConfig


def _triplets_text(cfg: RunConfig) -> str:
    """Where the training triplets come from and how each member is drawn."""
    if cfg.uses_relevance:
        drawn = (f"the query $q$ is a training image drawn in proportion to its total relevance $r_q$, the positive "
                 f"$p$ another image of its class drawn in proportion to $\\min(T_p, r(q,p))$ with $T_p$ = "
                 f"{cfg.relevance_tp:g} (relevance: the cosine of the frozen pretrained backbone's pooled features)")
    else:
        drawn = ("the query $q$ is a training image drawn uniformly, the positive $p$ another image of the same class, "
                 "uniformly")
    if cfg.out_of_class_fraction >= 1:
        negatives = ("and the negative $n$ an image of a different class (all negatives out-of-class; the paper also "
                     "draws in-class negatives)")
    else:
        out = cfg.out_of_class_fraction * 100
        negatives = (f"and the negative $n$ is out-of-class for {out:g}% of the triplets; the other {100 - out:g}% are "
                     f"in-class negatives, images of the query's class less relevant to it than the positive by at "
                     f"least $T_r$ = {cfg.relevance_tr:g} (in-class negatives, as in the paper)")
    if cfg.triplet_source == "online":
        return (f"Training draws its triplets while it runs (online sampling, the paper's Fig. 4): per-class "
                f"buffers of {cfg.buffer_size} images are filled by weighted reservoir sampling from a seeded stream "
                f"of the training images (seed {cfg.seed}) and rebuilt every {cfg.buffer_refresh_steps} steps; each "
                f"step draws its {cfg.batch_size} triplets $(q, p, n)$ from the buffers: {drawn}, {negatives}.")
    return (f"Training uses {cfg.num_triplets} triplets $(q, p, n)$ sampled once before training (seed {cfg.seed}) "
            f"and stored in `triplets_train.npy`: {drawn}, {negatives}.")


def _instance_text(cfg: RunConfig) -> str:
    """The instance triplets mixed in (``instance_fraction``), if any: what their positive and negative are."""
    if cfg.instance_fraction <= 0:
        return ""
    where = (f"one of {cfg.views_per_image} views of every training image made once and passed through the frozen "
             f"stages with the stage cache" if cfg.cache_stage_features else "a view made afresh at every step")
    hard = (" With batch-hard mining their second negative is the batch's closest other image, of any class."
            if cfg.miner == "batch_hard" else "")
    return (f" Each step, {cfg.instance_fraction * 100:g}% of the triplets are instance triplets instead: the positive "
            f"is another view of the query's own image (crop-and-rescale, colour jitter, blur, JPEG-like block "
            f"quantisation; {where}) and the negative another image of the query's class, so the network is asked "
            f"to keep two images of one class apart, not only classes.{hard}")


def _graded_text(cfg: RunConfig) -> str:
    """The graded margin (``graded_margin``) and the distillation term (``distill_weight``), those set."""
    graded = (f" The gap is graded by relevance, as in the paper: a triplet's gap is $g + {cfg.graded_margin:g}\\,(1 - "
              "\\mathrm{WuP}(c_q, c_n))$, with WuP the Wu–Palmer similarity of the query's and the negative's classes "
              "in WordNet, so a negative of an unlike class must lie farther away than one of a near class.")
    distill = (f" A distillation term with weight {cfg.distill_weight:g} is added: over the pairs of images of one "
               "class in the batch, the distances, each divided by their mean, are pulled towards the same distances "
               "under the frozen pretrained network (smooth L1), so training keeps which images of a class are alike.")
    return (graded if cfg.graded_margin > 0 else "") + (distill if cfg.distill_weight > 0 else "")


def _network_text(cfg: RunConfig) -> str:
    weights = "An ImageNet-pretrained" if cfg.pretrained else "A randomly initialised"
    if cfg.architecture == "multiscale":
        return (f"{weights} `{cfg.backbone}` backbone and, beside it, two shallow paths (the image subsampled 4:1 and "
                f"8:1, convolution and max-pooling; the paper's multiscale network), each L2-normalised and "
                f"concatenated, followed by a {cfg.head} head")
    return f"{weights} `{cfg.backbone}` backbone followed by a {cfg.head} head"


def _precision_text(cfg: RunConfig) -> str:
    cpu = cfg.device == "cpu"
    if cfg.bf16_cpu and (cfg.amp or cpu):
        where = "" if cpu else "on a CUDA GPU and "
        return (f"The network runs under bf16 autocast {where}on a CPU that computes bf16 natively (AVX-512 BF16 or "
                "AMX), in float32 elsewhere.")
    if cfg.bf16_cpu:
        return ("The network runs under bf16 autocast on a CPU that computes bf16 natively (AVX-512 BF16 or AMX), "
                "in float32 on a GPU and on other CPUs.")
    if cfg.amp and not cpu:
        return "The network runs under bf16 autocast on a CUDA GPU, in float32 on the CPU."
    return "The network runs in float32 throughout."


def _budget_text(cfg: RunConfig) -> str:
    minutes = getattr(cfg, "train_minutes", None)
    whole = getattr(cfg, "budget_minutes", None)
    if whole is not None:
        cap = f" (at most {minutes:g})" if minutes is not None else ""
        steps = (f"The whole run had a budget of {whole:g} minutes: training got the minutes{cap} left after "
                 f"decoding and the frozen-stage pass, less the evaluation's estimated cost; the trainer measured "
                 f"its step rate and fixed the schedule at {cfg.steps} steps to end on time; it ran them")
    elif minutes is not None:
        steps = (f"Training had a budget of {minutes:g} minutes: the trainer measured its step rate and fixed the "
                 f"schedule at {cfg.steps} steps to end on time; it ran them")
    else:
        steps = f"Training ran {cfg.steps} steps"
    return (f"{steps} with {cfg.optimizer.upper()} (learning rate {cfg.lr:g}, {cfg.lr_schedule} schedule, weight "
            f"decay {cfg.weight_decay:g}).")


def _search_text(cfg: RunConfig) -> str:
    backend = cfg.search_backend
    if backend in ("auto", "torch", "faiss"):
        return "by their exact Euclidean distance to it (exact search)"
    nlist = f"{cfg.index_nlist}" if cfg.index_nlist else "about $4\\sqrt{N}$"
    if backend == "faiss-ivf":
        how = (f"an inverted-file index (FAISS IVF-Flat) of {nlist} lists, {cfg.index_nprobe} of them searched per "
               "query; the distances of the returned images are exact")
    elif backend == "faiss-ivfpq":
        m = f"{cfg.index_pq_m}-byte" if cfg.index_pq_m else "product-quantised"
        how = (f"an inverted-file index of {nlist} lists with {m} codes (FAISS IVF-PQ), {cfg.index_nprobe} lists "
               "searched per query; " + (f"its {cfg.index_refine} x k best candidates are re-ranked by exact distance"
                                         if cfg.index_refine > 1 else "distances are estimated from the codes"))
    else:
        how = (f"a graph index (FAISS HNSW, M = {cfg.index_hnsw_m}, efSearch = {cfg.index_ef_search}); the distances "
               "of the returned images are exact")
    return f"by Euclidean distance with approximate search: {how}"


def method(cfg: RunConfig) -> str:
    """The method section, every statement from `cfg`: sampler, negatives, triplet source,
    architecture, loss, budget, precision and search backend."""
    dist = "squared Euclidean distance" if cfg.squared_distance else "Euclidean distance"
    frozen = ""
    if cfg.freeze_stages:
        frozen = (f" The first {cfg.freeze_stages} backbone stages keep their pretrained weights"
                  + (" and their outputs are computed once for every image, so each step trains only the rest of "
                     "the network." if cfg.cache_stage_features else "."))
    head_init = (" The head starts from the pretrained ImageNet classifier's rows of the dataset's classes."
                 if cfg.head_init == "classifier" else "")
    own = "drawn" if cfg.triplet_source == "online" else "pre-sampled"
    mined = (f" Besides its {own} negative, each query is also paired with the closest image of another class"
             " among all 3B images of the batch (batch-hard negative); the two losses are averaged."
             if cfg.miner == "batch_hard" else "")
    norm = "L2-normalised (distances lie in [0, 2])" if cfg.normalize_embeddings else "not normalised"
    return f"""**Triplet sampling.** {_triplets_text(cfg)}{_instance_text(cfg)} {cfg.val_triplets} further triplets drawn from
validation images only measure validation triplet accuracy.

**Network.** {_network_text(cfg)} maps an image, resized from 64 to {cfg.input_size} pixels, to a
{cfg.embedding_dim}-dimensional embedding $f(x)$, {norm}. Query, positive and negative images pass
through the *same* network: the three branches of the paper's triplet architecture share all weights,
and are implemented as one batch of $3B$ images ($B$ = {cfg.batch_size} triplets per step).{frozen}{head_init} {_precision_text(cfg)}

**Ranking layer.** The loss of a triplet is the hinge loss with gap $g$ = {cfg.gap:g}:
$\\ell(q,p,n) = \\max\\{{0,\\; g + D(f(q), f(p)) - D(f(q), f(n))\\}}$, with $D$ the {dist}, averaged
over the batch. It is zero once the negative is farther from the query than the positive by at
least $g$.{mined}{_graded_text(cfg)} {_budget_text(cfg)}

**Inference.** Every training image is embedded once; this is the search database. A query
image is embedded with the same network and the training images are ranked {_search_text(cfg)}:
the top-{cfg.top_k_show} are the most similar images, the bottom-{cfg.top_k_show} the least similar.{_rerank_text(cfg)}"""


def _rerank_text(cfg: RunConfig) -> str:
    """The query-time re-ranking behind the tune and val precision (``rerank``), if any."""
    if cfg.rerank == "none":
        return ""
    if cfg.rerank == "auto":
        return (" For the tune and val precision the queries are re-ranked: query expansion (AQE) or "
                "database-side augmentation (DBA) and its k are chosen on the tuning split, then applied to val "
                "once (the choice is named in the metrics, `rerank`); the query examples use plain search.")
    return (f" For the tune and val precision the queries are re-ranked ({cfg.rerank}, k = {cfg.rerank_k}); "
            "the query examples use plain search.")
