/* Lacewing: tc ingress on the node's uplink and on UNENROLLED pods' host-side veths.
 *
 * Before: the agent attached this program (pinned as prog_inbound) at install (uplink) and for
 * every pod that is not enrolled. After: TCP to an enrolled pod (lw_pods) goes to the socket
 * that owns its flow if the tunnel has one (flows the tunnel originated or accepted); a new
 * connection goes to the inbound-plaintext listener (LW_PORT_INBOUND) unless its port is
 * excluded, or to the tunnel's listener if it is addressed to LW_PORT_TUNNEL. On a pod's veth
 * (not the uplink), a new connection to a Service VIP in lw_vips goes to the inbound-plaintext
 * listener too, before the node's DNAT; replies from endpoints the tunnel dialled for such
 * connections go to its socket. Traffic to anything else passes untouched.
 */
#include "lw_capture.h"

int lw_inbound(struct __sk_buff *skb)
{
    struct lw_pkt p = {};
    if (lw_parse(skb, &p) < 0)
        return TC_ACT_OK;
    return lw_steer_inbound(skb, &p, 0, 0);
}
