/* Lacewing: tc ingress on an ENROLLED pod's host-side veth (packets the pod sends).
 *
 * Before: the agent attached this program (pinned as prog_pod_out) when it enrolled the pod and
 * put the pod's address in lw_pods. After: packets of flows the tunnel owns go to their socket;
 * a new connection goes to the outbound listener (LW_PORT_OUTBOUND) unless its port is excluded
 * or it is addressed to the node itself; an excluded connection to another enrolled pod is
 * inbound plaintext for that pod. Everything else passes untouched.
 */
#include "lw_capture.h"

int lw_pod_out(struct __sk_buff *skb)
{
    struct lw_pkt p = {};
    if (lw_parse(skb, &p) < 0)
        return TC_ACT_OK;
    if (lw_assign_established(skb, &p))
        return TC_ACT_OK;
    if (!p.syn)
        return TC_ACT_OK;

    __u32 saddr = p.tuple.ipv4.saddr;
    struct lw_pod *src = lw_pods.lookup(&saddr);
    if (!src)   /* not (or no longer) enrolled: treat as an unenrolled pod */
        return lw_steer_inbound(skb, &p, 0, 1);
    __u32 src_id = src->pod_id;

    __u32 daddr = p.tuple.ipv4.daddr;
    if (lw_local.lookup(&daddr))
        return TC_ACT_OK;
    if (lw_excluded(src_id, p.tuple.ipv4.dport, LW_DIR_OUT)) {
        lw_count(LW_ST_EXCLUDED);
        return lw_steer_inbound(skb, &p, src_id, 1);
    }
    __u32 dst_id = 0;
    struct lw_pod *dst = lw_pods.lookup(&daddr);
    if (dst)
        dst_id = dst->pod_id;
    return lw_capture_syn(skb, &p, LW_PORT_OUTBOUND, LW_KIND_OUTBOUND, src_id, dst_id, 0);
}
