/* Lacewing datapath: settings and the layouts shared with user space.
 *
 * Before: nothing (the loader passes settings as -D defines; the defaults below are the
 * documented ones). After: lw_maps.h declares maps of these types, and
 * node_agent/bpf/layout.py mirrors every struct here byte for byte.
 */
#ifndef LW_DEFS_H
#define LW_DEFS_H

#ifndef LW_PORT_OUTBOUND
#define LW_PORT_OUTBOUND 15001      /* transparent listener for enrolled pods' outbound TCP */
#endif
#ifndef LW_PORT_INBOUND
#define LW_PORT_INBOUND 15006       /* transparent listener for inbound plaintext */
#endif
#ifndef LW_PORT_TUNNEL
#define LW_PORT_TUNNEL 15008        /* the tunnel's own (mTLS) port: never sent to 15006 */
#endif
#ifndef LW_MARK
#define LW_MARK 0x4c57              /* skb mark on captured packets; fwmark rule -> local table */
#endif
#ifndef LW_MAX_PODS
#define LW_MAX_PODS 4096
#endif
#ifndef LW_MAX_EXCL
#define LW_MAX_EXCL 16384
#endif
#ifndef LW_MAX_FLOWS
#define LW_MAX_FLOWS 65536
#endif
#ifndef LW_MAX_CAPT
#define LW_MAX_CAPT 65536
#endif
#ifndef LW_MAX_TW
#define LW_MAX_TW 16384
#endif
#ifndef LW_MAX_VIPS
#define LW_MAX_VIPS 16384
#endif

/* capture kinds, also the flow record's kind */
#define LW_KIND_OUTBOUND 1          /* enrolled pod -> anything, via 15001 (reporter=source) */
#define LW_KIND_INBOUND  2          /* plaintext to an enrolled pod, via 15006 (reporter=destination) */
#define LW_KIND_TUNNEL   3          /* tunnel traffic to an enrolled pod's address, via 15008 */

/* the tunnel's listeners, as slots of the lw_listeners sockmap (registered by their owner) */
#define LW_LISTENER_OUTBOUND 0      /* LW_PORT_OUTBOUND */
#define LW_LISTENER_INBOUND  1      /* LW_PORT_INBOUND */
#define LW_LISTENER_TUNNEL   2      /* LW_PORT_TUNNEL */
#define LW_LISTENERS         3

#define LW_DIR_OUT 1
#define LW_DIR_IN  2

/* stats indices (per-CPU u64 counters) */
#define LW_ST_CAPT_OUT      0       /* SYNs assigned to the outbound listener */
#define LW_ST_CAPT_IN       1       /* SYNs assigned to the inbound-plaintext listener */
#define LW_ST_CAPT_TUNNEL   2       /* SYNs assigned to the tunnel listener */
#define LW_ST_ESTABLISHED   3       /* packets assigned to an existing socket */
#define LW_ST_NO_LISTENER   4       /* captured SYNs dropped: listener absent (fail closed) */
#define LW_ST_ASSIGN_FAIL   5       /* bpf_sk_assign refused */
#define LW_ST_EXCLUDED      6       /* SYNs let through by a port exclusion */
#define LW_ST_FLOW_OPEN     7       /* flow records created */
#define LW_ST_FLOW_FULL     8       /* flow records lost: table full */
#define LW_ST_FLOW_CLOSE    9       /* flow records closed */
#define LW_ST_TW_SYN        11      /* captured SYNs that met a TIME_WAIT socket of their own
                                       tuple: handed to the kernel's TIME_WAIT handling */
#define LW_ST_TW_UNREG      12      /* ... whose listener is not registered in lw_listeners:
                                       assigned to the listener as before (the kernel drops it) */
#define LW_ST_SKL_ASSIGNED  13      /* sk_lookup gave such a SYN its registered listener */
#define LW_ST_SKL_REFUSED   14      /* sk_lookup found no registered listener for it: refused */
#define LW_ST_CAPT_SERVICE  10      /* SYNs to a Service VIP (lw_vips) steered to 15006 */
#define LW_ST_MAX           16

/* enrolled pod, keyed by its IPv4 address (network order) */
struct lw_pod {
    __u32 pod_id;
    __u32 ifindex;                  /* host-side veth */
    __u32 flags;
    __u32 pad;
};

/* a port excluded from capture for one pod and direction */
struct lw_excl_key {
    __u32 pod_id;
    __u16 port;                     /* host order */
    __u8 dir;                       /* LW_DIR_OUT / LW_DIR_IN */
    __u8 pad;
};

/* hand-off from the tc programs to sockops: which capture a new connection came from */
struct lw_capt_key {
    __u32 saddr;                    /* client, network order */
    __u32 daddr;                    /* original destination, network order */
    __u16 sport;                    /* network order */
    __u16 dport;                    /* network order */
};

struct lw_capt {
    __u32 kind;
    __u32 src_pod;
    __u32 dst_pod;
    __u32 pad;
};

/* one captured connection, keyed by the socket cookie of the socket the tunnel accepted.
 * rx = bytes the client sent (Istio: received), tx = bytes delivered to the client (sent). */
struct lw_flow {
    __u32 saddr;                    /* client, network order */
    __u32 daddr;                    /* original destination, network order */
    __u16 sport;                    /* host order */
    __u16 dport;                    /* host order */
    __u32 kind;
    __u32 src_pod;
    __u32 dst_pod;
    __u64 rx_bytes;
    __u64 tx_bytes;
    __u64 opened_ns;                /* CLOCK_MONOTONIC */
    __u64 closed_ns;                /* 0 while open */
    __u32 state;                    /* last TCP state seen */
    __u32 flags;                    /* LW_FLOW_* */
    __u32 fin_seq;                  /* sequence number of the client's FIN, if seen */
    __u32 pad;
};

#define LW_FLOW_FIN_IN  1           /* the client's FIN arrived (fin_seq) */
#define LW_FLOW_FIN_OUT 2           /* our FIN was sent */

struct lw_cfg {
    __u64 netns_cookie;             /* the node's network namespace; sockops ignores the rest */
    __u32 enabled;
    __u32 uplink_ifindex;           /* the node's uplink (0: none): no Service VIP capture there */
};

/* lw_vips: a Service's cluster IP and port, or an endpoint address the tunnel dials for it */
struct lw_vip_key {
    __u32 addr;                     /* network order */
    __u16 port;                     /* network order */
    __u16 pad;
};

/* lw_vips value flags */
#define LW_VIP_SERVICE 1            /* VIP:port of a Service with an enrolled endpoint on this
                                     * node: unenrolled pods' SYNs to it go to 15006 */
#define LW_VIP_BACKEND 2            /* endpoint ip:port the tunnel may dial keeping an unenrolled
                                     * client's address: its replies go to the tunnel's socket */
#define LW_VIP_DRAIN 4              /* the entry no longer qualifies but connections the tunnel
                                     * holds still use it: their packets still go to its
                                     * sockets, no new connection is captured (the agent removes
                                     * the entry once the last of them has closed) */

#endif
