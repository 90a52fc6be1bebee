/* Lacewing: per-connection L4 counters (sockops, attached to the cgroup-v2 root).
 *
 * Before: a tc program captured a connection's SYN and left a note in lw_capt (tuple -> kind,
 * pods); the tunnel's transparent listener accepted it. After: lw_flows holds one record per
 * captured connection, keyed by the accepted socket's cookie, with the bytes the client sent
 * (rx) and the bytes delivered to it (tx) read from the kernel's own TCP counters
 * (tcp_sock.bytes_received / bytes_acked) — so bytes that user space never copies (spliced
 * with sockmap) are counted too, and retransmissions are not counted twice. Counters are
 * refreshed on every segment the socket sends (pure ACKs included), on every acknowledgement
 * of new data it receives, and finally when the socket reaches TCP_CLOSE, which also stamps
 * closed_ns. The agent reads and drains the map.
 * Also counted: the tunnel's own connection to an enrolled pod of this node made on a client's
 * behalf (inbound over 15008, and 15006): an active open from a transparent socket, i.e. from an
 * address that is neither the node's (lw_local) nor an enrolled pod's of this node (a same-node
 * connection is counted on its captured side). Its record has kind LW_KIND_DELIVERY and the
 * same orientation as the others: rx = bytes toward the pod's server (what the client sent),
 * tx = bytes the server sent back.
 * Sockets of other network namespaces than the node's (lw_cfg) are ignored.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/tcp.h>
#include "lw_maps.h"

#define LW_AF_INET 2
#define LW_TCP_FIN 0x01

#ifndef LW_KIND_DELIVERY
#define LW_KIND_DELIVERY 4          /* the tunnel's connection to a pod on a client's behalf */
#endif
#ifndef LW_FLOW_ACTIVE
#define LW_FLOW_ACTIVE 4            /* record of an actively opened socket (our SYN) */
#endif

/* The kernel's byte counters also count the FIN's sequence number once it is received
 * (bytes_received) or acknowledged (bytes_acked). Take it out, so the counts are payload bytes:
 *  - received: we noted the sequence number of the client's FIN when it arrived; once rcv_nxt
 *    is past it, the FIN was consumed (in order, possibly after a hole was filled);
 *  - sent: once our FIN is out (FIN_WAIT1/LAST_ACK seen) and everything sent is acked, the
 *    last acknowledged byte was the FIN. */
static __always_inline void lw_flow_refresh(struct bpf_sock_ops *skops, struct lw_flow *f)
{
    __u64 rx = skops->bytes_received;
    __u64 tx = skops->bytes_acked;
    if ((f->flags & LW_FLOW_FIN_IN) && (__s32)(skops->rcv_nxt - (f->fin_seq + 1)) >= 0 && rx)
        rx -= 1;
    if ((f->flags & LW_FLOW_FIN_OUT) && skops->snd_una == skops->snd_nxt && tx)
        tx -= 1;
    if (f->flags & LW_FLOW_ACTIVE) {
        /* our socket is the client here: its SYN was acknowledged too (bytes_acked counts it),
         * and what it sent is what the client sent */
        if (tx)
            tx -= 1;
        f->rx_bytes = tx;
        f->tx_bytes = rx;
        return;
    }
    f->rx_bytes = rx;
    f->tx_bytes = tx;
}

static __always_inline int lw_in_node(struct bpf_sock_ops *skops)
{
    if (skops->family != LW_AF_INET)
        return 0;
    __u32 zero = 0;
    struct lw_cfg *cfg = lw_cfg.lookup(&zero);
    return cfg && cfg->enabled && bpf_get_netns_cookie(skops) == cfg->netns_cookie;
}

static __always_inline void lw_flow_watch(struct bpf_sock_ops *skops, struct lw_flow *f)
{
    __u64 cookie = bpf_get_socket_cookie(skops);
    if (lw_flows.insert(&cookie, f) != 0) {
        lw_count(LW_ST_FLOW_FULL);
        return;
    }
    lw_count(LW_ST_FLOW_OPEN);
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG |
                                     BPF_SOCK_OPS_RTT_CB_FLAG |
                                     BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG |
                                     BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
}

int lw_sockops(struct bpf_sock_ops *skops)
{
    __u32 op = skops->op;

    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        if (!lw_in_node(skops))
            return 1;
        struct lw_capt_key ck = {};
        ck.saddr = skops->remote_ip4;
        ck.daddr = skops->local_ip4;
        ck.sport = bpf_htons((__u16)bpf_ntohl(skops->remote_port));
        ck.dport = bpf_htons((__u16)skops->local_port);
        struct lw_capt *c = lw_capt.lookup(&ck);
        if (!c)
            return 1;   /* not a captured connection */
        struct lw_flow f = {};
        f.saddr = ck.saddr;
        f.daddr = ck.daddr;
        f.sport = bpf_ntohs(ck.sport);
        f.dport = (__u16)skops->local_port;
        f.kind = c->kind;
        f.src_pod = c->src_pod;
        f.dst_pod = c->dst_pod;
        f.opened_ns = bpf_ktime_get_ns();
        f.state = BPF_TCP_ESTABLISHED;
        lw_flow_refresh(skops, &f);
        lw_capt.delete(&ck);
        lw_flow_watch(skops, &f);
        return 1;
    }

    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        /* the tunnel delivering a connection to an enrolled pod of this node from a
         * transparent socket that carries the client's address */
        if (!lw_in_node(skops))
            return 1;
        __u32 local = skops->local_ip4;
        __u32 remote = skops->remote_ip4;
        struct lw_pod *dst = lw_pods.lookup(&remote);
        if (!dst)
            return 1;   /* not to an enrolled pod of this node */
        if (lw_local.lookup(&local))
            return 1;   /* from the node's own address: not on a client's behalf */
        if (lw_pods.lookup(&local))
            return 1;   /* same node: counted on the captured side */
        struct lw_flow f = {};
        f.saddr = local;
        f.daddr = remote;
        f.sport = (__u16)skops->local_port;
        f.dport = (__u16)bpf_ntohl(skops->remote_port);
        f.kind = LW_KIND_DELIVERY;
        f.dst_pod = dst->pod_id;
        f.opened_ns = bpf_ktime_get_ns();
        f.state = BPF_TCP_ESTABLISHED;
        f.flags = LW_FLOW_ACTIVE;
        lw_flow_refresh(skops, &f);
        lw_flow_watch(skops, &f);
        return 1;
    }

    if (op == BPF_SOCK_OPS_HDR_OPT_LEN_CB || op == BPF_SOCK_OPS_RTT_CB) {
        /* every segment this socket sends (fresh "received"), and every acknowledgement of
         * new data it gets (fresh "sent"); only sockets we flagged get here */
        __u64 cookie = bpf_get_socket_cookie(skops);
        struct lw_flow *f = lw_flows.lookup(&cookie);
        if (f && !f->closed_ns)
            lw_flow_refresh(skops, f);
        return 1;
    }

    if (op == BPF_SOCK_OPS_PARSE_HDR_OPT_CB) {
        /* every segment this socket receives; we only want the client's FIN */
        if (!(skops->skb_tcp_flags & LW_TCP_FIN))
            return 1;
        __u64 cookie = bpf_get_socket_cookie(skops);
        struct lw_flow *f = lw_flows.lookup(&cookie);
        if (!f || (f->flags & LW_FLOW_FIN_IN))
            return 1;
        void *data = (void *)(long)skops->skb_data;
        void *end = (void *)(long)skops->skb_data_end;
        struct tcphdr *th = data;
        if ((void *)(th + 1) > end)
            return 1;
        __u32 hdr = th->doff * 4;
        __u32 len = skops->skb_len;
        if (len < hdr)
            return 1;
        f->fin_seq = bpf_ntohl(th->seq) + (len - hdr);
        f->flags |= LW_FLOW_FIN_IN;
        return 1;
    }

    if (op == BPF_SOCK_OPS_STATE_CB) {
        __u64 cookie = bpf_get_socket_cookie(skops);
        struct lw_flow *f = lw_flows.lookup(&cookie);
        if (!f || f->closed_ns)
            return 1;
        __u32 new = skops->args[1];
        if (new == BPF_TCP_FIN_WAIT1 || new == BPF_TCP_LAST_ACK)
            f->flags |= LW_FLOW_FIN_OUT;
        f->state = new;
        lw_flow_refresh(skops, f);
        if (new == BPF_TCP_CLOSE) {
            f->closed_ns = bpf_ktime_get_ns();
            lw_count(LW_ST_FLOW_CLOSE);
            bpf_sock_ops_cb_flags_set(skops, 0);
        }
        return 1;
    }
    return 1;
}
