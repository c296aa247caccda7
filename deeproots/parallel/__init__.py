"""Tensor-parallel inference over torch.distributed (gloo): one model's layers split over several processes.

plan.py says which heads, hidden units and vocabulary rows each rank owns (torch-free); weights.py presents a rank's
slices of the model file to the backend; backend.py places them and sums the partial products over the ranks;
group.py is the torch.distributed side; leader.py is rank 0's step plan and the other ranks' loop that follows it;
launch.py spawns the ranks on one host. Nothing here is imported unless a parallel mode is asked for.
"""
