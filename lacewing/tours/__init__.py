"""The steps of `lacewing demo`, each a function of a running local cluster (`LocalCluster`)."""
