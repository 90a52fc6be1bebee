/* Lacewing datapath: the maps every program shares.
 *
 * Before: lw_defs.h (types, sizes). After: each entry program includes this; with LW_PIN_DIR
 * defined (the loader does) every map is pinned at LW_PIN_DIR/<name> and re-used if already
 * pinned, so separately compiled programs and the agent share one copy. Without it (the
 * self-test) the maps are private to the program.
 */
#ifndef LW_MAPS_H
#define LW_MAPS_H

#include "lw_defs.h"

#ifdef LW_PIN_DIR
#define LW_MAP(_type, _k, _v, _name, _max) \
    BPF_TABLE_PINNED(_type, _k, _v, _name, _max, LW_PIN_DIR "/" #_name)
#else
#define LW_MAP(_type, _k, _v, _name, _max) BPF_TABLE(_type, _k, _v, _name, _max)
#endif

/* enrolled pods: IPv4 (network order) -> pod */
LW_MAP("hash", __u32, struct lw_pod, lw_pods, LW_MAX_PODS);
/* per-pod excluded ports */
LW_MAP("hash", struct lw_excl_key, __u8, lw_excl, LW_MAX_EXCL);
/* the node's own addresses: enrolled pods' connections to them are not captured */
LW_MAP("hash", __u32, __u8, lw_local, 256);
/* Service VIPs captured before DNAT, and the endpoints the tunnel dials for them:
 * {addr, port} -> LW_VIP_* flags */
LW_MAP("hash", struct lw_vip_key, __u32, lw_vips, LW_MAX_VIPS);
/* capture hand-off tc -> sockops, short-lived */
LW_MAP("lru_hash", struct lw_capt_key, struct lw_capt, lw_capt, LW_MAX_CAPT);
/* captured SYNs that met the tunnel's TIME_WAIT socket of their own tuple, tc -> sk_lookup:
 * client tuple -> LW_LISTENER_* slot (short-lived; lw_sk_lookup.c consumes it) */
LW_MAP("lru_hash", struct lw_capt_key, __u32, lw_tw, LW_MAX_TW);
/* the tunnel's listening sockets, registered by the process that owns them:
 * LW_LISTENER_* slot -> socket (user space writes a socket fd; reads give its cookie) */
LW_MAP("sockmap", __u32, __u64, lw_listeners, LW_LISTENERS);
/* per-connection L4 counters, keyed by socket cookie */
LW_MAP("hash", __u64, struct lw_flow, lw_flows, LW_MAX_FLOWS);
/* settings written by the agent at install */
LW_MAP("array", __u32, struct lw_cfg, lw_cfg, 1);
/* event counters */
LW_MAP("percpu_array", __u32, __u64, lw_stats, LW_ST_MAX);

static __always_inline void lw_count(__u32 idx)
{
    __u64 *v = lw_stats.lookup(&idx);
    if (v)
        *v += 1;
}

#endif
