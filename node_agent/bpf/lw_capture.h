/* Lacewing datapath: steering a TCP packet to the node tunnel's socket.
 *
 * Before: a tc ingress program on a host-side veth or the uplink of a node, in the node's
 * network namespace. After: the packet either goes on untouched (TC_ACT_OK, no mark), or
 * carries skb->sk = a tunnel socket and skb->mark = LW_MARK, so the fwmark rule the loader
 * installs routes it to `local 0.0.0.0/0 dev lo` and TCP delivers it to that socket — whose
 * local address is the packet's original destination (no NAT). Same technique as Cilium's
 * bpf/lib/proxy.h.
 */
#ifndef LW_CAPTURE_H
#define LW_CAPTURE_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#include "lw_maps.h"

struct lw_pkt {
    struct bpf_sock_tuple tuple;    /* ipv4 part: saddr, daddr, sport, dport, network order */
    __u8 syn;                       /* a connection's first packet: SYN without ACK */
};

/* Parse Ethernet/IPv4/TCP. Returns 0 for a TCP segment we may steer, -1 otherwise. */
static __always_inline int lw_parse(struct __sk_buff *skb, struct lw_pkt *p)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return -1;
    if (eth->h_proto != bpf_htons(ETH_P_IP))
        return -1;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return -1;
    if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
        return -1;
    if (ip->frag_off & bpf_htons(0x3fff))   /* MF or offset: not a whole segment head */
        return -1;
    struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
    if ((void *)(tcp + 1) > end)
        return -1;
    p->tuple.ipv4.saddr = ip->saddr;
    p->tuple.ipv4.daddr = ip->daddr;
    p->tuple.ipv4.sport = tcp->source;
    p->tuple.ipv4.dport = tcp->dest;
    p->syn = tcp->syn && !tcp->ack;
    return 0;
}

/* Give the packet to the socket that already owns its flow (a tunnel socket, or any socket of
 * the node's own). Listeners and TIME_WAIT do not count. 1 = assigned, 0 = no such socket.
 * A SYN starts a new connection and never belongs to an existing socket: a socket of the node
 * that still holds the same tuple (the tunnel's side of an earlier connection, lingering in
 * FIN_WAIT or LAST_ACK) must not swallow it. (The kernel's own early demux does the same with
 * TIME_WAIT sockets; node namespaces turn it off — docs/datapath.md.) */
static __always_inline int lw_assign_established(struct __sk_buff *skb, struct lw_pkt *p)
{
    if (p->syn)
        return 0;
    struct bpf_sock_tuple t = p->tuple;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    if (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT) {
        bpf_sk_release(sk);
        return 0;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        lw_count(LW_ST_ASSIGN_FAIL);
        return 0;
    }
    skb->mark = LW_MARK;
    lw_count(LW_ST_ESTABLISHED);
    return 1;
}

/* The capture's note for sockops: which capture the connection came from. */
static __always_inline void lw_note_capture(struct lw_capt_key *ck, __u32 kind, __u32 src_pod,
                                            __u32 dst_pod)
{
    struct lw_capt cv = {};
    cv.kind = kind;
    cv.src_pod = src_pod;
    cv.dst_pod = dst_pod;
    lw_capt.update(ck, &cv);
    lw_count(kind == LW_KIND_OUTBOUND ? LW_ST_CAPT_OUT
             : kind == LW_KIND_INBOUND ? LW_ST_CAPT_IN : LW_ST_CAPT_TUNNEL);
}

/* Does a socket of the node hold the SYN's own tuple in TIME_WAIT? That is the tunnel's side
 * of an earlier connection on this tuple that the tunnel closed first (it carries the pod's
 * addresses, in the node namespace, for 60 s). A listener's request socket cannot be hashed
 * beside it, so a SYN assigned to the listener would be dropped. */
static __always_inline int lw_meets_time_wait(struct __sk_buff *skb, struct lw_pkt *p)
{
    struct bpf_sock_tuple own = p->tuple;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &own, sizeof(own.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    int tw = sk->state == BPF_TCP_TIME_WAIT;
    bpf_sk_release(sk);
    return tw;
}

/* Is the listener of `slot` registered in lw_listeners (by the process that owns it)? */
static __always_inline int lw_listener_registered(__u32 slot)
{
    struct bpf_sock *sk = (struct bpf_sock *)lw_listeners.lookup(&slot);
    if (!sk)
        return 0;
    bpf_sk_release(sk);
    return 1;
}

/* Give a SYN to the tunnel's transparent listener on `port`, and leave a note for sockops
 * saying which capture the connection came from. Returns a tc verdict: with no listener the
 * SYN is dropped (fail closed, never sent around the mesh) unless fail_open.
 *
 * A SYN that meets a TIME_WAIT socket of its own tuple is not assigned: it is marked (so the
 * fwmark rule delivers it locally) and its tuple recorded in lw_tw. The kernel's own lookup
 * then finds the TIME_WAIT socket, which accepts the new SYN (TCP_TW_SYN), and looks for a
 * listener for the original destination — a lookup our sk_lookup program (lw_sk_lookup.c)
 * answers with the registered listener of `slot`; the kernel kills the TIME_WAIT socket and
 * the listener accepts, exactly as TPROXY's nf_tproxy_handle_time_wait4 does. Should the
 * TIME_WAIT socket expire meanwhile, the kernel's listener lookup runs the same program. */
static __always_inline int lw_capture_syn(struct __sk_buff *skb, struct lw_pkt *p, __u16 port,
                                          __u32 kind, __u32 src_pod, __u32 dst_pod,
                                          int fail_open)
{
    struct bpf_sock_tuple t = p->tuple;
    t.ipv4.dport = bpf_htons(port);
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (sk && sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        sk = 0;
    }
    if (!sk) {
        if (fail_open)
            return TC_ACT_OK;
        lw_count(LW_ST_NO_LISTENER);
        return TC_ACT_SHOT;
    }

    struct lw_capt_key ck = {};
    ck.saddr = p->tuple.ipv4.saddr;
    ck.daddr = p->tuple.ipv4.daddr;
    ck.sport = p->tuple.ipv4.sport;
    ck.dport = p->tuple.ipv4.dport;

    if (lw_meets_time_wait(skb, p)) {
        __u32 slot = kind == LW_KIND_OUTBOUND ? LW_LISTENER_OUTBOUND
                     : kind == LW_KIND_INBOUND ? LW_LISTENER_INBOUND : LW_LISTENER_TUNNEL;
        if (lw_listener_registered(slot)) {
            bpf_sk_release(sk);
            lw_tw.update(&ck, &slot);
            skb->mark = LW_MARK;
            lw_note_capture(&ck, kind, src_pod, dst_pod);
            lw_count(LW_ST_TW_SYN);
            return TC_ACT_OK;
        }
        lw_count(LW_ST_TW_UNREG);      /* as before: the listener gets it, the kernel drops it */
    }

    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        lw_count(LW_ST_ASSIGN_FAIL);
        return TC_ACT_SHOT;
    }
    skb->mark = LW_MARK;
    lw_note_capture(&ck, kind, src_pod, dst_pod);
    return TC_ACT_OK;
}

static __always_inline int lw_excluded(__u32 pod_id, __be16 port, __u8 dir)
{
    struct lw_excl_key k = {};
    k.pod_id = pod_id;
    k.port = bpf_ntohs(port);
    k.dir = dir;
    return lw_excl.lookup(&k) != 0;
}

/* TCP that is not addressed to an enrolled pod: a Service VIP with an enrolled endpoint on this
 * node (lw_vips, LW_VIP_SERVICE) is captured here, BEFORE the node's DNAT picks an endpoint —
 * after it, a same-node endpoint is reached through its veth's egress, where nothing can steer
 * (bpf_sk_assign is ingress-only). A new connection goes to the inbound-plaintext listener,
 * which balances the Service itself; the flow's later packets go to the socket it accepted.
 * No exclusion applies to a VIP. Not on the uplink: off-node traffic was DNATed by the
 * source node. Replies from an endpoint the tunnel dialled for such a connection
 * (LW_VIP_BACKEND: the tunnel keeps the client's address, so they are addressed to the
 * unenrolled client) go to the tunnel's socket. A draining entry (LW_VIP_DRAIN: it no longer
 * qualifies, but open connections use it) keeps steering those connections' packets and
 * captures no new SYN. Everything else passes. */
static __always_inline int lw_steer_service(struct __sk_buff *skb, struct lw_pkt *p,
                                            __u32 src_pod, int looked_up)
{
    struct lw_vip_key k = {};
    k.addr = p->tuple.ipv4.daddr;
    k.port = p->tuple.ipv4.dport;
    __u32 *flags = lw_vips.lookup(&k);
    if (flags && (*flags & LW_VIP_SERVICE)) {
        if (!looked_up && lw_assign_established(skb, p))
            return TC_ACT_OK;
        if (!p->syn || (*flags & LW_VIP_DRAIN))
            return TC_ACT_OK;
        __u32 zero = 0;
        struct lw_cfg *cfg = lw_cfg.lookup(&zero);
        if (cfg && cfg->uplink_ifindex && cfg->uplink_ifindex == skb->ifindex)
            return TC_ACT_OK;
        lw_count(LW_ST_CAPT_SERVICE);
        return lw_capture_syn(skb, p, LW_PORT_INBOUND, LW_KIND_INBOUND, src_pod, 0, 0);
    }
    if (p->syn || looked_up)
        return TC_ACT_OK;
    k.addr = p->tuple.ipv4.saddr;
    k.port = p->tuple.ipv4.sport;
    flags = lw_vips.lookup(&k);
    if (flags && (*flags & LW_VIP_BACKEND))
        lw_assign_established(skb, p);
    return TC_ACT_OK;
}

/* Inbound: TCP to an enrolled pod that did not come through a tunnel (and, through
 * lw_steer_service, to a Service VIP that leads to one). */
static __always_inline int lw_steer_inbound(struct __sk_buff *skb, struct lw_pkt *p,
                                            __u32 src_pod, int looked_up)
{
    __u32 daddr = p->tuple.ipv4.daddr;
    struct lw_pod *dst = lw_pods.lookup(&daddr);
    if (!dst)
        return lw_steer_service(skb, p, src_pod, looked_up);
    /* flows the tunnel owns (it originated them, or already accepted them) */
    if (!looked_up && lw_assign_established(skb, p))
        return TC_ACT_OK;
    if (!p->syn)
        return TC_ACT_OK;
    __u32 dst_id = dst->pod_id;
    if (p->tuple.ipv4.dport == bpf_htons(LW_PORT_TUNNEL)) {
        /* the tunnel's own traffic addressed to a pod: its listener if it has one, else as
         * it is; never the plaintext listener */
        return lw_capture_syn(skb, p, LW_PORT_TUNNEL, LW_KIND_TUNNEL, src_pod, dst_id, 1);
    }
    if (lw_excluded(dst_id, p->tuple.ipv4.dport, LW_DIR_IN)) {
        lw_count(LW_ST_EXCLUDED);
        return TC_ACT_OK;
    }
    return lw_capture_syn(skb, p, LW_PORT_INBOUND, LW_KIND_INBOUND, src_pod, dst_id, 0);
}

#endif
